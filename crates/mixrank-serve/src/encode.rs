//! Request → [`Batch`], through the training [`Encoder`], so a served row is encoded
//! exactly like a training row (same hashing, vocabularies, dense transforms and
//! standardisation statistics).
//!
//! The request becomes an Arrow chunk with one array per column the encoder reads:
//! feature columns from the request (a context value repeated for every candidate),
//! label-side columns (labels, masks, teachers, weights, the segment and device enums
//! when they are not features, position, request id) filled with neutral values the
//! model never reads. An integer becomes Int64, a number Float64, a string Utf8, a
//! list a List of Utf8 or Int64, mirroring the types of the Parquet training data:
//! send categorical values with the JSON type of their training column.
//!
//! Feature columns that only the position tower reads
//! ([`ExperimentConfig::request_free_columns`]; the tower is off at serving) are not
//! part of the request: they are filled with the integer 1 (position 1) for every row,
//! or the neutral value of their label-side role, and a request that sends them has
//! them ignored (the service counts it in `/metrics`).

use crate::error::{Result, ServeError};
use crate::request::{Features, ScoreRequest, Value};
use arrow::array::{ArrayRef, Float64Array, Int64Array, ListBuilder, StringArray, StringBuilder};
use mixrank_data::column::Col;
use mixrank_data::config::{ExperimentConfig, TeacherKind};
use mixrank_data::encode::ChunkOrigin;
use mixrank_data::error::Location;
use mixrank_data::{BadRows, Batch, DataError, Encoder};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

/// What fills a column the request does not carry.
#[derive(Debug, Clone)]
enum Fill {
    F64(f64),
    I64(i64),
    Str(String),
    NullF64,
    NullI64,
}

#[derive(Debug, Clone)]
enum Role {
    Feature,
    Fill(Fill),
    /// A feature column the served model does not read (only the position tower
    /// reads it, and the tower is off at serving): filled, and ignored when sent.
    Ignored(Fill),
    /// The surface (`[columns] segment`) when it is not a feature: read from the request
    /// when it carries it (the calibration layer maps each row by its surface), else
    /// filled.
    Surface(Fill),
}

/// Encodes requests for one model config.
pub struct RequestEncoder {
    encoder: Encoder,
    /// Per encoder column, in [`Encoder::column_names`] order.
    roles: Vec<Role>,
    /// Per encoder column: what fills it when a source lacks it and the model part
    /// that runs does not read it (the other tower's features): the neutral value of
    /// its label-side role (e.g. the segment enum's first value), else nulls.
    absent: Vec<Fill>,
    /// Source columns of the model's features a request must carry.
    features: BTreeSet<String>,
    /// Feature columns a request need not carry ([`ExperimentConfig::request_free_columns`]):
    /// filled with a neutral value; ignored (and counted) when sent.
    free: BTreeSet<String>,
    /// The segment column when it is not a feature: optional in a request.
    surface: Option<String>,
}

impl RequestEncoder {
    pub fn new(cfg: Arc<ExperimentConfig>, encoder: Encoder) -> Self {
        let features: BTreeSet<String> = cfg
            .categorical
            .iter()
            .map(|c| c.column.clone())
            .chain(cfg.dense.iter().map(|d| d.column.clone()))
            .collect();
        let s = &cfg.columns;
        // The value a column the request does not carry takes, by its label-side role.
        let label_fill = |c: &String| -> Option<Fill> {
            let enum_first = [&s.segment, &s.device]
                .into_iter()
                .flatten()
                .find(|e| &e.column == c)
                .map(|e| e.values.first().cloned().unwrap_or_default());
            Some(if let Some(v) = enum_first {
                Fill::Str(v)
            } else if s.position.as_ref().is_some_and(|p| &p.column == c) {
                Fill::I64(1)
            } else if s.request_id.as_deref() == Some(c) {
                Fill::Str("request".into())
            } else if s.keep.iter().any(|k| k == c) {
                Fill::NullF64
            } else if let Some(te) = cfg.tasks.iter().filter_map(|t| t.teacher.as_ref()).find(|te| &te.column == c) {
                Fill::F64(if te.kind == TeacherKind::Probability { 0.5 } else { 0.0 })
            } else if cfg.tasks.iter().any(|t| t.mask.as_deref() == Some(c)) || s.sample_weight.as_deref() == Some(c) {
                Fill::F64(1.0)
            } else if cfg.tasks.iter().any(|t| &t.label == c) {
                // Labels: 0 is valid for binary tasks and under log1p.
                Fill::F64(0.0)
            } else {
                return None;
            })
        };
        let free: BTreeSet<String> = cfg.request_free_columns().into_iter().collect();
        let roles = encoder
            .column_names()
            .iter()
            .map(|c| {
                if !features.contains(c) && s.segment.as_ref().is_some_and(|e| &e.column == c) {
                    Role::Surface(label_fill(c).unwrap_or(Fill::F64(0.0)))
                } else if free.contains(c) {
                    // Read only by the position tower, which does not run at serving:
                    // the integer 1 (position 1) for every row, unless a label-side
                    // role of the column needs another value.
                    Role::Ignored(label_fill(c).unwrap_or(Fill::I64(1)))
                } else if features.contains(c) {
                    Role::Feature
                } else {
                    Role::Fill(label_fill(c).unwrap_or(Fill::F64(0.0)))
                }
            })
            .collect();
        let surface = s.segment.as_ref().map(|e| e.column.clone()).filter(|c| !features.contains(c));
        let absent = encoder.column_names().iter().map(|c| label_fill(c).unwrap_or(Fill::NullI64)).collect();
        let features = features.difference(&free).cloned().collect();
        RequestEncoder { encoder, roles, absent, features, free, surface }
    }

    /// The segment column when a request may carry it without it being a feature.
    pub fn surface_column(&self) -> Option<&str> {
        self.surface.as_deref()
    }

    /// The encoder's columns, in the order [`RequestEncoder::encode_arrays`] takes them.
    pub fn column_names(&self) -> &[String] {
        self.encoder.column_names()
    }

    /// `n` rows of what fills encoder column `i` when a source does not carry it and
    /// the part of the model that runs does not read it.
    pub fn absent(&self, i: usize, n: usize) -> ArrayRef {
        match &self.roles[i] {
            Role::Feature => fill(&self.absent[i], n),
            Role::Fill(f) | Role::Ignored(f) | Role::Surface(f) => fill(f, n),
        }
    }

    /// Source columns the model reads as features (a request must carry them).
    pub fn feature_columns(&self) -> &BTreeSet<String> {
        &self.features
    }

    /// Feature columns the served model does not read (only the position tower reads
    /// them): a request need not carry them, and one it sends is ignored.
    pub fn ignored_columns(&self) -> &BTreeSet<String> {
        &self.free
    }

    /// The columns of [`RequestEncoder::ignored_columns`] that `req` carries (in its
    /// context or in any candidate).
    pub fn ignored_in<'a>(&'a self, req: &ScoreRequest) -> Vec<&'a str> {
        self.free
            .iter()
            .filter(|c| req.context.contains_key(*c) || req.candidates.iter().any(|f| f.contains_key(*c)))
            .map(String::as_str)
            .collect()
    }

    /// Validates `req` and encodes its candidates, in order. `extra` names columns the
    /// request may carry besides features (e.g. the bid of the ranking score).
    pub fn encode(&self, req: &ScoreRequest, extra: &BTreeSet<String>) -> Result<Batch> {
        let n = req.candidates.len();
        let known = |k: &String| {
            self.features.contains(k) || self.free.contains(k) || extra.contains(k) || self.surface.as_ref() == Some(k)
        };
        let list_known = || {
            let mut v: Vec<&str> = self.features.iter().map(String::as_str).collect();
            v.extend(extra.iter().map(String::as_str));
            v.join(", ")
        };
        if let Some(k) = req.context.keys().find(|k| !known(k)) {
            return Err(ServeError::bad(
                format!("context.{k}"),
                format!("unknown feature; the model reads {}", list_known()),
            ));
        }
        for (i, c) in req.candidates.iter().enumerate() {
            if let Some(k) = c.keys().find(|k| !known(k)) {
                return Err(ServeError::bad(
                    format!("candidates[{i}].{k}"),
                    format!("unknown feature; the model reads {}", list_known()),
                ));
            }
            if let Some(k) = c.keys().find(|k| req.context.contains_key(*k) && !self.free.contains(*k)) {
                return Err(ServeError::bad(format!("candidates[{i}].{k}"), "also given in context; give it once"));
            }
        }
        let names = self.encoder.column_names();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(names.len());
        for (name, role) in names.iter().zip(&self.roles) {
            arrays.push(match role {
                Role::Fill(f) | Role::Ignored(f) => fill(f, n),
                Role::Surface(f) if !req.context.contains_key(name) && !req.candidates.iter().any(|c| c.contains_key(name)) => {
                    fill(f, n)
                }
                Role::Feature | Role::Surface(_) => match req.context.get(name) {
                    Some(v) => build(&vec![v; n], &|_| format!("context.{name}"))?,
                    None => {
                        let mut vals = Vec::with_capacity(n);
                        for (i, c) in req.candidates.iter().enumerate() {
                            match c.get(name) {
                                Some(v) => vals.push(v),
                                None => {
                                    return Err(ServeError::bad(
                                        format!("candidates[{i}].{name}"),
                                        "missing feature (give it in the context or in every candidate; null for a missing value)",
                                    ))
                                }
                            }
                        }
                        build(&vals, &|i| format!("candidates[{i}].{name}"))?
                    }
                },
            });
        }
        let field = |column: &str, row: Option<u64>| match (req.context.contains_key(column), row) {
            (true, _) => format!("context.{column}"),
            (false, Some(r)) => format!("candidates[{r}].{column}"),
            (false, None) => format!("candidates[*].{column}"),
        };
        self.encode_arrays(arrays, n, &field)
    }

    /// Encodes one two-tower request's context alone for the user tower, as `rows`
    /// identical rows: every column of `user` must be in `context` (400 naming the
    /// first missing one), and nothing but `user` columns, ignored columns and `extra`
    /// may be. The item tower's feature columns are filled with nulls (the user tower
    /// does not read them).
    pub fn encode_context(
        &self,
        context: &Features,
        user: &BTreeSet<String>,
        extra: &BTreeSet<String>,
        rows: usize,
    ) -> Result<Batch> {
        let surface = self.surface.as_deref();
        if let Some(k) = context.keys().find(|k| {
            !user.contains(*k) && !self.free.contains(*k) && !extra.contains(*k) && Some(k.as_str()) != surface
        }) {
            let what = if self.features.contains(k) {
                "an item feature: a request with `item_ids` takes item features from the item table, or from \
                 `item_features` for ids the table lacks"
            } else {
                "unknown feature"
            };
            let names: Vec<&str> = user.iter().map(String::as_str).collect();
            return Err(ServeError::bad(
                format!("context.{k}"),
                format!("{what}; the user tower reads {}", names.join(", ")),
            ));
        }
        if let Some(k) = user.iter().find(|k| !context.contains_key(*k)) {
            return Err(ServeError::bad(
                format!("context.{k}"),
                "missing user/context feature (null for a missing value)",
            ));
        }
        let names = self.encoder.column_names();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            arrays.push(match (&self.roles[i], context.get(name)) {
                (Role::Feature, Some(v)) if user.contains(name) => {
                    build(&vec![v; rows], &|_| format!("context.{name}"))?
                }
                // The surface, when it is not a feature (the calibration layer reads it).
                (_, Some(v)) if Some(name.as_str()) == surface => {
                    build(&vec![v; rows], &|_| format!("context.{name}"))?
                }
                _ => self.absent(i, rows),
            });
        }
        self.encode_arrays(arrays, rows, &|column: &str, _| format!("context.{column}"))
    }

    /// Encodes a chunk of source columns (one array per [`Encoder::column_names`] entry,
    /// `n` rows); `field(column, row)` names a bad value in errors.
    pub fn encode_arrays(
        &self,
        arrays: Vec<ArrayRef>,
        n: usize,
        field: &dyn Fn(&str, Option<u64>) -> String,
    ) -> Result<Batch> {
        let names = self.encoder.column_names();
        let cols = arrays
            .iter()
            .zip(names)
            .map(|(a, name)| {
                Col::from_arrow(a).map_err(|t| ServeError::bad(field(name, None), format!("unsupported type {t}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let file = Path::new("request");
        let map = |e: DataError| match e {
            DataError::WrongType { column, expected, found, .. } => {
                ServeError::bad(field(&column, None), format!("expected {expected}, found {found}"))
            }
            DataError::BadValue { location, column, message, .. } => {
                let row = match location {
                    Location::ParquetRow { row, .. } => Some(row),
                    _ => None,
                };
                ServeError::bad(field(&column, row), message)
            }
            other => ServeError::bad("", other.to_string()),
        };
        self.encoder.check_types(file, &cols).map_err(map)?;
        let origin = ChunkOrigin { file, file_key: 0, first_row: 0, row_group: None, lines: None };
        let batch = self.encoder.encode(&cols, n, &origin, None, &BadRows::new(0)).map_err(map)?;
        if batch.rows != n {
            return Err(ServeError::Internal(format!("encoded {} rows for {n} candidates", batch.rows)));
        }
        Ok(batch)
    }
}

fn fill(f: &Fill, n: usize) -> ArrayRef {
    match f {
        Fill::F64(v) => Arc::new(Float64Array::from(vec![*v; n])),
        Fill::I64(v) => Arc::new(Int64Array::from(vec![*v; n])),
        Fill::Str(s) => Arc::new(StringArray::from(vec![s.as_str(); n])),
        Fill::NullF64 => Arc::new(Float64Array::from(vec![None::<f64>; n])),
        Fill::NullI64 => Arc::new(Int64Array::from(vec![None::<i64>; n])),
    }
}

/// Kind of a column's values, nulls and empty lists aside.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Float,
    Str,
    IntList,
    StrList,
}

fn kind(v: &Value) -> Option<Kind> {
    match v {
        Value::Null => None,
        Value::Int(_) => Some(Kind::Int),
        Value::Float(_) => Some(Kind::Float),
        Value::Str(_) => Some(Kind::Str),
        Value::IntList(l) if l.is_empty() => None,
        Value::StrList(l) if l.is_empty() => None,
        Value::IntList(_) => Some(Kind::IntList),
        Value::StrList(_) => Some(Kind::StrList),
    }
}

/// One Arrow array from one column's values; `at(i)` names value `i` in messages.
fn build(vals: &[&Value], at: &dyn Fn(usize) -> String) -> Result<ArrayRef> {
    let mut col_kind: Option<(Kind, usize)> = None;
    for (i, v) in vals.iter().enumerate() {
        let Some(k) = kind(v) else { continue };
        match col_kind {
            None => col_kind = Some((k, i)),
            Some((c, _)) if c == k => {}
            // Integers and numbers mix into a Float64 column.
            Some((Kind::Int, j)) if k == Kind::Float => col_kind = Some((Kind::Float, j)),
            Some((Kind::Float, _)) if k == Kind::Int => {}
            Some((_, j)) => {
                return Err(ServeError::bad(
                    at(i),
                    format!("is {} but {} is {}; one feature takes one type", v.kind(), at(j), vals[j].kind()),
                ))
            }
        }
    }
    let any_list = vals.iter().any(|v| matches!(v, Value::IntList(_) | Value::StrList(_)));
    Ok(match col_kind.map(|c| c.0) {
        Some(Kind::Int) => Arc::new(Int64Array::from(
            vals.iter().map(|v| if let Value::Int(x) = v { Some(*x) } else { None }).collect::<Vec<_>>(),
        )),
        Some(Kind::Float) => Arc::new(Float64Array::from(
            vals.iter()
                .map(|v| match v {
                    Value::Int(x) => Some(*x as f64),
                    Value::Float(x) => Some(*x),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        )),
        Some(Kind::Str) => Arc::new(StringArray::from(
            vals.iter().map(|v| if let Value::Str(x) = v { Some(x.as_str()) } else { None }).collect::<Vec<_>>(),
        )),
        Some(Kind::IntList) => {
            let mut b = ListBuilder::new(arrow::array::Int64Builder::new());
            for v in vals {
                match v {
                    Value::IntList(l) => {
                        b.values().append_slice(l);
                        b.append(true);
                    }
                    Value::StrList(_) => b.append(true),
                    _ => b.append(false),
                }
            }
            Arc::new(b.finish())
        }
        Some(Kind::StrList) => str_list(vals),
        None if any_list => str_list(vals),
        // All null: Int64 nulls are accepted by every use (key, number, position).
        None => Arc::new(Int64Array::from(vec![None::<i64>; vals.len()])),
    })
}

fn str_list(vals: &[&Value]) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new());
    for v in vals {
        match v {
            Value::StrList(l) => {
                for s in l {
                    b.values().append_value(s);
                }
                b.append(true);
            }
            Value::IntList(_) => b.append(true),
            _ => b.append(false),
        }
    }
    Arc::new(b.finish())
}
