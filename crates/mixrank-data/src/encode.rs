//! Turns one chunk of source columns into a [`Batch`]: categorical keys to table
//! rows, dense transforms, label checks, masks, weights and the special columns.
//!
//! Row-level problems (an unparsable number, a NaN label, a binary label outside
//! {0, 1}) are either fatal or, under `max_bad_rows`, skipped and counted in
//! [`BadRows`]. Nothing is silently coerced.

use crate::batch::{Batch, CatColumn};
use crate::column::{Col, Key};
use crate::config::{ExperimentConfig, LabelTransform, SourceFormat, TableKind, TaskKind, TeacherKind};
use crate::error::{DataError, Location, Result};
use crate::hash::{bucket, row_fraction};
use crate::stats::DenseStats;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counts skipped bad rows across threads and enforces `max_bad_rows`.
#[derive(Debug, Default)]
pub struct BadRows {
    max: u64,
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl BadRows {
    pub fn new(max: u64) -> Self {
        BadRows { max, ..Default::default() }
    }

    /// Records a row-level error; fails with it (or with `TooManyBadRows`) when the
    /// policy does not allow skipping it.
    pub fn record(&self, e: DataError) -> Result<()> {
        if self.max == 0 {
            return Err(e);
        }
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let mut first = self.first.lock().expect("bad-row log poisoned");
        if first.len() < 5 {
            first.push(e.to_string());
        }
        if n > self.max {
            return Err(DataError::TooManyBadRows { count: n, max: self.max, first: first[0].clone() });
        }
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Up to five of the skipped rows' messages.
    pub fn examples(&self) -> Vec<String> {
        self.first.lock().expect("bad-row log poisoned").clone()
    }
}

/// Where a chunk's rows are, for messages and row-fraction splits.
pub struct ChunkOrigin<'a> {
    pub file: &'a Path,
    /// Hash of the file name (not the directory), so a moved data set splits the same.
    pub file_key: u64,
    /// Row index within the file of the chunk's first row.
    pub first_row: u64,
    /// Parquet row group, if any.
    pub row_group: Option<usize>,
    /// Text sources: 1-based line of each row.
    pub lines: Option<&'a [u64]>,
}

impl ChunkOrigin<'_> {
    fn location(&self, r: usize) -> Location {
        match (self.lines, self.row_group) {
            (Some(lines), _) => Location::Line(lines[r]),
            (None, g) => Location::ParquetRow { row_group: g.unwrap_or(0), row: self.first_row + r as u64 },
        }
    }
}

/// What the encoder does with dense values.
#[derive(Debug, Clone)]
pub enum DenseMode {
    /// Transforms (log1p, clip) only, missing cells as NaN: used by the pass that
    /// fits [`DenseStats`] and by `data stats`.
    Raw,
    /// Full transforms with these statistics.
    Fitted(Arc<DenseStats>),
}

/// Encodes chunks for one config.
pub struct Encoder {
    cfg: Arc<ExperimentConfig>,
    mode: DenseMode,
    /// Column index (into `required_columns`) for each consumer, resolved once.
    cols: ColumnIndex,
    libsvm_labels: bool,
    /// The statistics pass ([`Encoder::interning`]): ids of learned vocabularies not
    /// built yet.
    interners: Option<Arc<Interners>>,
    /// [`Encoder::at_position`]: every row read as if shown at this position.
    at_position: Option<u32>,
}

/// The statistics pass's ids for the values of learned vocabularies not built yet
/// (`vocabulary = { from = "train" }`): each distinct value of such a table gets the next
/// id when a chunk is encoded (the ids depend on thread timing; the values they name do
/// not), so the pass counts values from the batches it is given and names them after.
#[derive(Debug, Default)]
pub struct Interners {
    /// Per table of the config (`None` for tables that are not interned).
    tables: Vec<Option<Mutex<Interner>>>,
}

/// Distinct values in first-seen order.
#[derive(Debug, Default)]
pub struct Interner {
    index: std::collections::HashMap<String, u32>,
    values: Vec<String>,
}

impl Interner {
    fn intern(&mut self, v: &str) -> u32 {
        if let Some(&id) = self.index.get(v) {
            return id;
        }
        let id = self.values.len() as u32;
        self.index.insert(v.to_string(), id);
        self.values.push(v.to_string());
        id
    }
}

impl Interners {
    /// Table `t`'s values by id (empty for a table that is not interned).
    pub fn values(&self, t: usize) -> Vec<String> {
        match self.tables.get(t) {
            Some(Some(m)) => m.lock().expect("interner poisoned").values.clone(),
            _ => Vec::new(),
        }
    }
}

struct ColumnIndex {
    names: Vec<String>,
    cat: Vec<usize>,
    dense: Vec<usize>,
    label: Vec<usize>,
    mask: Vec<Option<usize>>,
    teacher: Vec<Option<usize>>,
    weight: Option<usize>,
    segment: Option<usize>,
    device: Option<usize>,
    position: Option<usize>,
    request: Option<usize>,
    keep: Vec<usize>,
    /// Carried unchanged ([`Encoder::with_passthrough`]).
    passthrough: Vec<usize>,
}

impl Encoder {
    /// The statistics pass's encoder: dense values raw ([`DenseMode::Raw`]), and every
    /// value of a learned vocabulary not built yet given an id of the returned
    /// [`Interners`] (so the pass can count values by id and name them after).
    pub fn interning(cfg: Arc<ExperimentConfig>) -> Result<(Encoder, Arc<Interners>)> {
        let interners = Arc::new(Interners {
            tables: cfg
                .tables
                .iter()
                .map(|t| matches!(t.kind, TableKind::Learned { built: None, .. }).then(Default::default))
                .collect(),
        });
        let mut enc = Encoder::new(cfg, DenseMode::Raw)?;
        enc.interners = Some(interners.clone());
        Ok((enc, interners))
    }

    /// Fails when a feature needs standardisation and `mode` is not `Fitted`, and (in
    /// `Fitted` mode) when a learned vocabulary is not built: training, evaluation and
    /// serving map values with the vocabulary the run built or stored. In `Raw` mode
    /// (`data stats`) a value of an unbuilt learned vocabulary reads as its only row, the
    /// out-of-vocabulary row 0.
    pub fn new(cfg: Arc<ExperimentConfig>, mode: DenseMode) -> Result<Encoder> {
        if let (DenseMode::Fitted(_), Some(t)) = (&mode, cfg.unbuilt_vocabularies().first()) {
            return Err(DataError::Vocabulary {
                table: t.to_string(),
                message: "not built: its values come from the statistics pass over the training split \
                          (a run builds it and stores it with its checkpoints)"
                    .into(),
            });
        }
        if let DenseMode::Fitted(s) = &mode {
            if s.mean.len() != cfg.dense.len() {
                return Err(DataError::Other(format!(
                    "dense statistics cover {} features but the config has {}",
                    s.mean.len(),
                    cfg.dense.len()
                )));
            }
        }
        let names = cfg.required_columns();
        let at = |c: &str| names.iter().position(|n| n == c).expect("required_columns lists every column");
        let s = &cfg.columns;
        let cols = ColumnIndex {
            cat: cfg.categorical.iter().map(|c| at(&c.column)).collect(),
            dense: cfg.dense.iter().map(|d| at(&d.column)).collect(),
            label: cfg.tasks.iter().map(|t| at(&t.label)).collect(),
            mask: cfg.tasks.iter().map(|t| t.mask.as_deref().map(at)).collect(),
            teacher: cfg.tasks.iter().map(|t| t.teacher.as_ref().map(|te| at(&te.column))).collect(),
            weight: s.sample_weight.as_deref().map(at),
            segment: s.segment.as_ref().map(|e| at(&e.column)),
            device: s.device.as_ref().map(|e| at(&e.column)),
            position: s.position.as_ref().map(|p| at(&p.column)),
            request: s.request_id.as_deref().map(at),
            keep: s.keep.iter().map(|k| at(k)).collect(),
            passthrough: Vec::new(),
            names,
        };
        let libsvm_labels = matches!(cfg.data.format, SourceFormat::Libsvm(_));
        Ok(Encoder { cfg, mode, cols, libsvm_labels, interners: None, at_position: None })
    }

    /// Reads every row as if it had been shown at `position` (`mixrank eval --at-position`):
    /// the `[columns] position` column's value is replaced by `position` before it is
    /// encoded, both for `Batch::position` and for every categorical feature reading that
    /// column (so a model with position as a plain feature scores "shown at position N").
    /// Fails when the config names no position column or `position` is 0.
    pub fn at_position(mut self, position: u32) -> Result<Self> {
        if self.cols.position.is_none() {
            return Err(DataError::Other(format!(
                "scoring at a fixed position needs a position column ([columns] position) in {}",
                self.cfg.path.display()
            )));
        }
        if position == 0 {
            return Err(DataError::Other("positions start at 1, found 0".into()));
        }
        self.at_position = Some(position);
        Ok(self)
    }

    /// Also carries `columns` unchanged in every batch (`Batch::passthrough`, in this
    /// order), read beside the columns the config needs (a column may be both). For
    /// writing rows out with their scores (`mixrank predict`); the encoded fields do not
    /// change.
    pub fn with_passthrough(mut self, columns: &[String]) -> Self {
        self.cols.passthrough = columns
            .iter()
            .map(|c| match self.cols.names.iter().position(|n| n == c) {
                Some(i) => i,
                None => {
                    self.cols.names.push(c.clone());
                    self.cols.names.len() - 1
                }
            })
            .collect();
        self
    }

    pub fn config(&self) -> &ExperimentConfig {
        &self.cfg
    }

    /// The config, shared (no copy).
    pub fn shared_config(&self) -> Arc<ExperimentConfig> {
        self.cfg.clone()
    }

    /// Source columns, in the order `encode` expects them.
    pub fn column_names(&self) -> &[String] {
        &self.cols.names
    }

    /// Checks, before any row is read, that each column's type can serve its use.
    pub fn check_types(&self, file: &Path, cols: &[Col<'_>]) -> Result<()> {
        let wrong = |i: usize, expected: &str| DataError::WrongType {
            file: file.to_path_buf(),
            column: self.cols.names[i].clone(),
            expected: expected.to_string(),
            found: cols[i].type_name().to_string(),
        };
        for (f, &i) in self.cfg.categorical.iter().zip(&self.cols.cat) {
            let ok = match (&cols[i], f.pooling) {
                (Col::List { inner, .. }, Some(_)) => inner.is_key_type(),
                (c, _) => c.is_key_type(),
            };
            if !ok {
                let exp = if f.pooling.is_some() { "a list of strings or integers" } else { "string or integer" };
                return Err(wrong(i, exp));
            }
        }
        let numeric = self.cols.dense.iter().chain(&self.cols.label).chain(self.cols.mask.iter().flatten());
        for &i in
            numeric.chain(self.cols.teacher.iter().flatten()).chain(self.cols.weight.iter()).chain(&self.cols.keep)
        {
            if !cols[i].is_numeric_type() {
                return Err(wrong(i, "a number"));
            }
        }
        for &i in self.cols.position.iter() {
            if !matches!(cols[i], Col::I64(_) | Col::I32(_) | Col::U32(_) | Col::U64(_) | Col::Text { .. }) {
                return Err(wrong(i, "an integer"));
            }
        }
        for &i in self.cols.segment.iter().chain(self.cols.device.iter()).chain(self.cols.request.iter()) {
            if !cols[i].is_key_type() {
                return Err(wrong(i, "string or integer"));
            }
        }
        Ok(())
    }

    /// A batch of no rows with this config's columns (a data-parallel rank whose shard
    /// of the split has run out takes part in a step with it).
    pub fn empty_batch(&self) -> Batch {
        let cfg = &*self.cfg;
        let multi: Vec<bool> = cfg.categorical.iter().map(|f| f.pooling.is_some()).collect();
        Batch::empty(&multi, cfg.dense_width(), cfg.tasks.len(), cfg.columns.keep.len())
    }

    /// Encodes `rows` rows. `cols` follows [`Encoder::column_names`]. Rows outside the
    /// split's row fraction are dropped; bad rows are recorded in `bad` (which fails
    /// when the policy does not allow skipping).
    pub fn encode(
        &self,
        cols: &[Col<'_>],
        rows: usize,
        origin: &ChunkOrigin<'_>,
        fraction: Option<(f64, f64)>,
        bad: &BadRows,
    ) -> Result<Batch> {
        let cfg = &*self.cfg;
        let n_tasks = cfg.tasks.len();
        let dw = cfg.dense_width();
        let mut b = Batch { rows, dense_width: dw, n_tasks, n_keep: cfg.columns.keep.len(), ..Default::default() };
        // Per-row first error; such rows are removed at the end.
        let mut row_err: Vec<Option<DataError>> = Vec::new();
        let fail = |r: usize, col: usize, message: String, row_err: &mut Vec<Option<DataError>>| {
            if row_err.is_empty() {
                row_err.resize_with(rows, || None);
            }
            if row_err[r].is_none() {
                row_err[r] = Some(DataError::BadValue {
                    file: origin.file.to_path_buf(),
                    location: origin.location(r),
                    column: self.cols.names[col].clone(),
                    message,
                });
            }
        };

        // Categorical features.
        for (f, &ci) in cfg.categorical.iter().zip(&self.cols.cat) {
            let table = &cfg.tables[f.table];
            let col = &cols[ci];
            let mut out = CatColumn::default();
            // The statistics pass: interned ids for an unbuilt learned vocabulary.
            let mut interner = self
                .interners
                .as_ref()
                .and_then(|i| i.tables[f.table].as_ref())
                .map(|m| m.lock().expect("interner poisoned"));
            let mut row_of = |k: &Key<'_>| match interner.as_deref_mut() {
                Some(i) => i.intern(k.text().as_ref()),
                None => table_row(&table.kind, k),
            };
            let fixed = self.at_position.filter(|_| Some(ci) == self.cols.position);
            match (&f.pooling, fixed) {
                (None, Some(n)) => out.ids = vec![row_of(&Key::Int(i64::from(n))); rows],
                (Some(_), Some(n)) => {
                    out.ids = vec![row_of(&Key::Int(i64::from(n))); rows];
                    out.offsets = Some((0..=rows as u32).collect());
                }
                (None, None) => {
                    out.ids.reserve(rows);
                    for r in 0..rows {
                        match col.key(r) {
                            Ok(k) => out.ids.push(row_of(&k)),
                            Err(m) => {
                                out.ids.push(0);
                                fail(r, ci, m, &mut row_err);
                            }
                        }
                    }
                }
                (Some(_), None) => {
                    let mut offsets = Vec::with_capacity(rows + 1);
                    offsets.push(0u32);
                    for r in 0..rows {
                        let ids = &mut out.ids;
                        if let Err(m) = col.keys(r, |k| ids.push(row_of(&k))) {
                            fail(r, ci, m, &mut row_err);
                        }
                        offsets.push(out.ids.len() as u32);
                    }
                    out.offsets = Some(offsets);
                }
            }
            b.cat.push(out);
        }

        // Dense features: values, then missing indicators.
        b.dense = vec![0f32; rows * dw];
        let n_dense = cfg.dense.len();
        let mut ind = n_dense;
        for (j, (d, &ci)) in cfg.dense.iter().zip(&self.cols.dense).enumerate() {
            let col = &cols[ci];
            let (mean, inv_std) = match &self.mode {
                DenseMode::Fitted(s) if d.standardize => (s.mean[j], 1.0 / s.std[j]),
                _ => (0.0, 1.0),
            };
            let ind_col = d.missing_indicator.then(|| {
                ind += 1;
                ind - 1
            });
            for r in 0..rows {
                let (raw, missing) = match col.num(r) {
                    Ok(Some(v)) if v.is_finite() => (v, false),
                    Ok(Some(v)) => {
                        fail(r, ci, format!("expected a finite number, found {v}"), &mut row_err);
                        (d.missing, true)
                    }
                    Ok(None) => (d.missing, true),
                    Err(m) => {
                        fail(r, ci, m, &mut row_err);
                        (d.missing, true)
                    }
                };
                if missing && matches!(self.mode, DenseMode::Raw) {
                    // Raw mode reports missing cells as NaN so statistics can count them.
                    b.dense[r * dw + j] = f32::NAN;
                    if let Some(k) = ind_col {
                        b.dense[r * dw + k] = 1.0;
                    }
                    continue;
                }
                let mut v = raw;
                if d.log1p {
                    v = v.signum() * v.abs().ln_1p();
                }
                if let Some((lo, hi)) = d.clip {
                    v = v.clamp(lo, hi);
                }
                v = (v - mean) * inv_std;
                b.dense[r * dw + j] = v as f32;
                if let Some(k) = ind_col {
                    b.dense[r * dw + k] = missing as u8 as f32;
                }
            }
        }

        // Labels, masks and teachers: [n_tasks, rows].
        b.labels = vec![0f32; rows * n_tasks];
        b.label_mask = vec![1f32; rows * n_tasks];
        b.teacher_logits = vec![f32::NAN; rows * n_tasks];
        for (t, task) in cfg.tasks.iter().enumerate() {
            let base = t * rows;
            if let Some(mi) = self.cols.mask[t] {
                for r in 0..rows {
                    match cols[mi].num(r) {
                        Ok(Some(v)) if v.is_finite() => b.label_mask[base + r] = (v != 0.0) as u8 as f32,
                        Ok(Some(v)) => fail(r, mi, format!("mask must be finite, found {v}"), &mut row_err),
                        Ok(None) => fail(r, mi, "mask is missing".into(), &mut row_err),
                        Err(m) => fail(r, mi, m, &mut row_err),
                    }
                }
            }
            let li = self.cols.label[t];
            for r in 0..rows {
                let masked_out = b.label_mask[base + r] == 0.0;
                let v = match cols[li].num(r) {
                    Ok(Some(v)) => v,
                    Ok(None) if masked_out => continue,
                    Ok(None) => {
                        fail(r, li, format!("label of task `{}` is missing", task.name), &mut row_err);
                        continue;
                    }
                    Err(m) => {
                        fail(r, li, m, &mut row_err);
                        continue;
                    }
                };
                if !v.is_finite() {
                    fail(r, li, format!("label of task `{}` must be finite, found {v}", task.name), &mut row_err);
                    continue;
                }
                let y = match task.kind {
                    TaskKind::Binary => match (v, self.libsvm_labels) {
                        (0.0, _) => 0.0,
                        (1.0, _) => 1.0,
                        (-1.0, true) => 0.0,
                        _ => {
                            let allowed = if self.libsvm_labels { "{-1, 0, 1}" } else { "{0, 1}" };
                            fail(
                                r,
                                li,
                                format!("binary label of task `{}` must be in {allowed}, found {v}", task.name),
                                &mut row_err,
                            );
                            continue;
                        }
                    },
                    TaskKind::Regression => match task.transform {
                        LabelTransform::None => v,
                        LabelTransform::Log1p if v > -1.0 => v.ln_1p(),
                        LabelTransform::Log1p => {
                            fail(
                                r,
                                li,
                                format!("log1p label of task `{}` must be > -1, found {v}", task.name),
                                &mut row_err,
                            );
                            continue;
                        }
                    },
                };
                if !masked_out {
                    b.labels[base + r] = y as f32;
                }
            }
            if let (Some(ti), Some(te)) = (self.cols.teacher[t], &task.teacher) {
                for r in 0..rows {
                    match cols[ti].num(r) {
                        Ok(Some(v)) => match teacher_logit(v, te.kind) {
                            Ok(z) => b.teacher_logits[base + r] = z,
                            Err(m) => fail(r, ti, m, &mut row_err),
                        },
                        Ok(None) => fail(r, ti, "teacher score is missing".into(), &mut row_err),
                        Err(m) => fail(r, ti, m, &mut row_err),
                    }
                }
            }
        }

        // Sample weights.
        b.weights = vec![1f32; rows];
        if let Some(wi) = self.cols.weight {
            for r in 0..rows {
                match cols[wi].num(r) {
                    Ok(Some(v)) if v.is_finite() && v >= 0.0 => b.weights[r] = v as f32,
                    Ok(Some(v)) => {
                        fail(r, wi, format!("sample weight must be finite and >= 0, found {v}"), &mut row_err)
                    }
                    Ok(None) => fail(r, wi, "sample weight is missing".into(), &mut row_err),
                    Err(m) => fail(r, wi, m, &mut row_err),
                }
            }
        }

        // Segment and device: enum columns.
        for (slot, spec, idx) in [
            (&mut b.segment, &cfg.columns.segment, self.cols.segment),
            (&mut b.device, &cfg.columns.device, self.cols.device),
        ] {
            *slot = vec![0u32; rows];
            if let (Some(spec), Some(ci)) = (spec, idx) {
                for (r, out) in slot.iter_mut().enumerate() {
                    match cols[ci].text(r) {
                        Ok(Some(v)) => match spec.id_of(&v) {
                            Some(id) => *out = id,
                            None => fail(
                                r,
                                ci,
                                format!("unknown value {v:?}; expected one of {:?}", spec.values),
                                &mut row_err,
                            ),
                        },
                        Ok(None) => fail(r, ci, "value is missing".into(), &mut row_err),
                        Err(m) => fail(r, ci, m, &mut row_err),
                    }
                }
            }
        }

        b.position = vec![0u32; rows];
        if let (Some(spec), Some(n)) = (&cfg.columns.position, self.at_position) {
            b.position = vec![n.min(spec.max); rows];
        } else if let (Some(spec), Some(pi)) = (&cfg.columns.position, self.cols.position) {
            for r in 0..rows {
                match cols[pi].num(r) {
                    Ok(Some(v)) if v >= 1.0 && v.fract() == 0.0 => {
                        b.position[r] = (v as u64).min(spec.max as u64) as u32
                    }
                    Ok(Some(v)) => fail(r, pi, format!("expected a position >= 1, found {v}"), &mut row_err),
                    Ok(None) => fail(r, pi, "position is missing".into(), &mut row_err),
                    Err(m) => fail(r, pi, m, &mut row_err),
                }
            }
        }

        b.request_id = match self.cols.request {
            Some(qi) => (0..rows)
                .map(|r| match cols[qi].key(r) {
                    Ok(k) => k.hash(),
                    Err(m) => {
                        fail(r, qi, m, &mut row_err);
                        0
                    }
                })
                .collect(),
            None => (0..rows as u64).map(|r| origin.file_key ^ (origin.first_row + r)).collect(),
        };

        b.keep = vec![0f32; rows * b.n_keep];
        for (k, &ci) in self.cols.keep.iter().enumerate() {
            for r in 0..rows {
                match cols[ci].num(r) {
                    Ok(Some(v)) => b.keep[k * rows + r] = v as f32,
                    Ok(None) => b.keep[k * rows + r] = f32::NAN,
                    Err(m) => fail(r, ci, m, &mut row_err),
                }
            }
        }

        b.passthrough = self.cols.passthrough.iter().map(|&ci| cols[ci].to_arrow(rows)).collect();

        // Drop rows outside the split's fraction, then bad rows (recording them).
        let in_split = |r: usize| match fraction {
            None => true,
            Some((lo, hi)) => {
                let u = row_fraction(origin.file_key, origin.first_row + r as u64);
                lo <= u && u < hi
            }
        };
        let mut keep_rows = Vec::with_capacity(rows);
        let mut dropped = false;
        for r in 0..rows {
            if !in_split(r) {
                dropped = true;
                continue;
            }
            if let Some(e) = row_err.get_mut(r).and_then(Option::take) {
                bad.record(e)?;
                dropped = true;
                continue;
            }
            keep_rows.push(r);
        }
        Ok(if dropped { b.gather(&keep_rows) } else { b })
    }
}

/// The table row of a key.
#[inline]
pub fn table_row(kind: &TableKind, key: &Key<'_>) -> u32 {
    match kind {
        TableKind::Hashed { buckets } => bucket(key.hash(), *buckets),
        TableKind::Vocabulary { values, index } => {
            index.get(key.text().as_ref()).copied().unwrap_or(values.len() as u32)
        }
        TableKind::Learned { built: Some(v), .. } => {
            v.index.get(key.text().as_ref()).copied().unwrap_or(v.values.len() as u32)
        }
        // Not built: the table's one row (only a `Raw` encoder gets here; see `Encoder::new`).
        TableKind::Learned { built: None, .. } => 0,
    }
}

/// Converts a teacher score to a logit; probabilities are clamped to [1e-7, 1 - 1e-7]
/// so a logged 0 or 1 stays finite.
pub fn teacher_logit(v: f64, kind: TeacherKind) -> Result<f32, String> {
    if !v.is_finite() {
        return Err(format!("teacher score must be finite, found {v}"));
    }
    match kind {
        TeacherKind::Logit => Ok(v as f32),
        TeacherKind::Probability if (0.0..=1.0).contains(&v) => {
            let p = v.clamp(1e-7, 1.0 - 1e-7);
            Ok((p / (1.0 - p)).ln() as f32)
        }
        TeacherKind::Probability => Err(format!("teacher probability must be in [0, 1], found {v}")),
    }
}
