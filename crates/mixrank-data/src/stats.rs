//! Statistics over a split: the dense standardisation statistics that training needs,
//! and the per-column summary printed by `mixrank data stats`.

use crate::batch::Batch;
use crate::config::{ExperimentConfig, LearnedVocabulary, Split, TableKind, TaskKind};
use crate::encode::{DenseMode, Encoder};
use crate::error::Result;
use crate::pipeline::{BatchStream, StreamOptions};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Mean and standard deviation of each dense feature after log1p/clip, over the
/// observed (non-missing) training values. A constant feature gets std 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseStats {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub rows: u64,
}

/// Running mean/variance (Welford), mergeable.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Moments {
    pub n: u64,
    pub mean: f64,
    m2: f64,
    pub min: f64,
    pub max: f64,
}

impl Moments {
    pub fn push(&mut self, x: f64) {
        if self.n == 0 {
            self.min = x;
            self.max = x;
        }
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    /// Population standard deviation.
    pub fn std(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.m2 / self.n as f64).sqrt()
        }
    }
}

/// Fits [`DenseStats`] with one pass over `split` (at most `max_rows` rows).
pub fn fit_dense_stats(cfg: Arc<ExperimentConfig>, split: &Split, max_rows: Option<u64>) -> Result<DenseStats> {
    let mut no_tables = cfg.as_ref().clone();
    // Only the dense values are read: learned vocabularies are not counted here.
    for t in &mut no_tables.tables {
        if let crate::config::TableKind::Learned { built: None, .. } = t.kind {
            t.kind = crate::config::TableKind::Hashed { buckets: 1 };
        }
    }
    Ok(fit_train_stats(Arc::new(no_tables), split, max_rows)?.dense)
}

/// Learned vocabularies, table name → values in row order.
pub type Vocabularies = BTreeMap<String, Vec<String>>;

/// What the statistics pass over the training split fits.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainStats {
    /// Over the first `max_rows` rows of the split (file order).
    pub dense: DenseStats,
    /// Every learned vocabulary of the config not built yet (`vocabulary = { from =
    /// "train" }`), over the whole split: [`select_vocabulary`] of its value counts.
    pub vocabularies: Vocabularies,
}

/// One pass over `split` (unshuffled): dense standardisation statistics over its first
/// `max_rows` rows (as [`fit_dense_stats`]), and the vocabulary of every learned table
/// not built yet over all its rows (every feature reading the table counts, each value
/// of a multi-valued cell once; rows outside the split's row fraction and skipped bad
/// rows do not count). Without learned tables the pass stops after `max_rows` rows.
pub fn fit_train_stats(cfg: Arc<ExperimentConfig>, split: &Split, max_rows: Option<u64>) -> Result<TrainStats> {
    let n = cfg.dense.len();
    let mut m = vec![Moments::default(); n];
    let (enc, interners) = Encoder::interning(cfg.clone())?;
    let learned: Vec<(usize, LearnedVocabulary)> = cfg
        .tables
        .iter()
        .enumerate()
        .filter_map(|(i, t)| match t.kind {
            TableKind::Learned { rule, built: None } => Some((i, rule)),
            _ => None,
        })
        .collect();
    let mut opts = StreamOptions::from_config(&cfg, false);
    opts.max_rows = if learned.is_empty() { max_rows } else { None };
    opts.batch_size = 8192;
    let dense_rows = max_rows.unwrap_or(u64::MAX);
    let mut rows = 0u64;
    // Per table of the config: counts by interned id.
    let mut counts: Vec<Vec<u64>> = vec![Vec::new(); cfg.tables.len()];
    for b in BatchStream::start(Arc::new(enc), split, opts)? {
        let b = b?;
        let take = (dense_rows.saturating_sub(rows)).min(b.rows as u64) as usize;
        rows += take as u64;
        for r in 0..take {
            for (j, mj) in m.iter_mut().enumerate() {
                let v = b.dense[r * b.dense_width + j];
                if !v.is_nan() {
                    mj.push(v as f64);
                }
            }
        }
        for (f, c) in cfg.categorical.iter().zip(&b.cat) {
            if !learned.iter().any(|&(t, _)| t == f.table) {
                continue;
            }
            let counts = &mut counts[f.table];
            for &id in &c.ids {
                let id = id as usize;
                if id >= counts.len() {
                    counts.resize(id + 1, 0);
                }
                counts[id] += 1;
            }
        }
    }
    let mut vocabularies = Vocabularies::new();
    for (t, rule) in learned {
        let values = interners.values(t);
        let seen = values.into_iter().zip(counts[t].iter().copied().chain(std::iter::repeat(0)));
        vocabularies.insert(cfg.tables[t].name.clone(), select_vocabulary(seen, rule));
    }
    Ok(TrainStats {
        dense: DenseStats {
            mean: m.iter().map(|x| x.mean).collect(),
            std: m.iter().map(|x| if x.std() > 1e-12 { x.std() } else { 1.0 }).collect(),
            rows,
        },
        vocabularies,
    })
}

/// The values a learned vocabulary keeps from `(value, count)` pairs (each value once):
/// count ≥ `min_count`, sorted by count descending, ties by the value's text ascending
/// (byte order), the first `max_size` of them. Row `i` of the table is the `i`-th value.
pub fn select_vocabulary(counts: impl IntoIterator<Item = (String, u64)>, rule: LearnedVocabulary) -> Vec<String> {
    let mut kept: Vec<(String, u64)> = counts.into_iter().filter(|(_, c)| *c >= rule.min_count.max(1)).collect();
    kept.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if let Some(max) = rule.max_size {
        kept.truncate(max as usize);
    }
    kept.into_iter().map(|(v, _)| v).collect()
}

/// `mixrank data stats` output for one split. The JSON shape is documented in
/// docs/data.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SplitStats {
    pub split: String,
    pub files: usize,
    pub units: usize,
    pub rows: u64,
    pub bad_rows: u64,
    pub bad_row_examples: Vec<String>,
    pub categorical: Vec<CategoricalStats>,
    pub dense: Vec<DenseColumnStats>,
    pub tasks: Vec<TaskStats>,
    pub segments: Vec<SegmentStats>,
    pub requests: Option<u64>,
    pub mean_weight: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CategoricalStats {
    pub name: String,
    pub table_rows: u64,
    /// Distinct table rows touched.
    pub distinct_rows: u64,
    /// Share of values landing on the most frequent row.
    pub top_row_share: f64,
    /// Mean values per example (1 for single-valued features).
    pub mean_values: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DenseColumnStats {
    pub name: String,
    pub missing_fraction: f64,
    /// After log1p/clip, before standardisation; observed values only.
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskStats {
    pub name: String,
    pub kind: TaskKind,
    /// Rows whose label counts (mask = 1).
    pub labelled: u64,
    /// Binary: positive rate; regression: mean label.
    pub mean: f64,
    pub std: f64,
    /// Same, per segment (in segment-id order).
    pub per_segment: Vec<SegmentTaskStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentTaskStats {
    pub segment: String,
    pub labelled: u64,
    pub mean: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentStats {
    pub segment: String,
    pub rows: u64,
}

/// Computes [`SplitStats`] with one pass over a split.
pub fn split_stats(cfg: Arc<ExperimentConfig>, split: &Split, max_rows: Option<u64>) -> Result<SplitStats> {
    let files = crate::reader::split_files(split)?.len();
    let enc = Arc::new(Encoder::new(cfg.clone(), DenseMode::Raw)?);
    let mut opts = StreamOptions::from_config(&cfg, false);
    opts.max_rows = max_rows;
    opts.batch_size = 8192;
    let mut stream = BatchStream::start(enc, split, opts)?;
    let units = stream.units();
    let n_seg = cfg.columns.segment.as_ref().map_or(1, |s| s.values.len());
    let mut acc = Acc::new(&cfg, n_seg);
    for b in stream.by_ref() {
        acc.add(&cfg, &b?);
    }
    let seg_names = cfg.segment_names();
    let rows = acc.rows;
    Ok(SplitStats {
        split: split.name.clone(),
        files,
        units,
        rows,
        bad_rows: stream.bad_rows().count(),
        bad_row_examples: stream.bad_rows().examples(),
        categorical: cfg
            .categorical
            .iter()
            .zip(&acc.cat)
            .map(|(f, (counts, values))| {
                let total: u64 = counts.values().sum();
                CategoricalStats {
                    name: f.name.clone(),
                    table_rows: cfg.tables[f.table].rows(),
                    distinct_rows: counts.len() as u64,
                    top_row_share: counts.values().max().map_or(0.0, |&m| m as f64 / total.max(1) as f64),
                    mean_values: *values as f64 / rows.max(1) as f64,
                }
            })
            .collect(),
        dense: cfg
            .dense
            .iter()
            .zip(&acc.dense)
            .map(|(d, m)| DenseColumnStats {
                name: d.name.clone(),
                missing_fraction: 1.0 - m.n as f64 / rows.max(1) as f64,
                mean: m.mean,
                std: m.std(),
                min: m.min,
                max: m.max,
            })
            .collect(),
        tasks: cfg
            .tasks
            .iter()
            .zip(&acc.tasks)
            .map(|(t, per_seg)| {
                let mut all = Moments::default();
                for m in per_seg {
                    merge(&mut all, m);
                }
                TaskStats {
                    name: t.name.clone(),
                    kind: t.kind,
                    labelled: all.n,
                    mean: all.mean,
                    std: all.std(),
                    per_segment: per_seg
                        .iter()
                        .zip(&seg_names)
                        .map(|(m, s)| SegmentTaskStats { segment: s.clone(), labelled: m.n, mean: m.mean })
                        .collect(),
                }
            })
            .collect(),
        segments: acc
            .seg_rows
            .iter()
            .zip(&seg_names)
            .map(|(&r, s)| SegmentStats { segment: s.clone(), rows: r })
            .collect(),
        requests: cfg.columns.request_id.as_ref().map(|_| acc.requests.len() as u64),
        mean_weight: acc.weight_sum / rows.max(1) as f64,
    })
}

fn merge(a: &mut Moments, b: &Moments) {
    if b.n == 0 {
        return;
    }
    if a.n == 0 {
        *a = *b;
        return;
    }
    let n = a.n + b.n;
    let d = b.mean - a.mean;
    let mean = a.mean + d * b.n as f64 / n as f64;
    let m2 = a.m2 + b.m2 + d * d * a.n as f64 * b.n as f64 / n as f64;
    *a = Moments { n, mean, m2, min: a.min.min(b.min), max: a.max.max(b.max) };
}

struct Acc {
    rows: u64,
    cat: Vec<(std::collections::HashMap<u32, u64>, u64)>,
    dense: Vec<Moments>,
    tasks: Vec<Vec<Moments>>,
    seg_rows: Vec<u64>,
    requests: HashSet<u64>,
    weight_sum: f64,
}

impl Acc {
    fn new(cfg: &ExperimentConfig, n_seg: usize) -> Acc {
        Acc {
            rows: 0,
            cat: vec![Default::default(); cfg.categorical.len()],
            dense: vec![Moments::default(); cfg.dense.len()],
            tasks: vec![vec![Moments::default(); n_seg]; cfg.tasks.len()],
            seg_rows: vec![0; n_seg],
            requests: HashSet::new(),
            weight_sum: 0.0,
        }
    }

    fn add(&mut self, cfg: &ExperimentConfig, b: &Batch) {
        self.rows += b.rows as u64;
        for (c, (counts, values)) in b.cat.iter().zip(&mut self.cat) {
            for &id in &c.ids {
                *counts.entry(id).or_default() += 1;
            }
            *values += c.ids.len() as u64;
        }
        for r in 0..b.rows {
            for (j, m) in self.dense.iter_mut().enumerate() {
                let v = b.dense[r * b.dense_width + j];
                if !v.is_nan() {
                    m.push(v as f64);
                }
            }
            let s = b.segment[r] as usize;
            self.seg_rows[s] += 1;
            self.weight_sum += b.weights[r] as f64;
        }
        for t in 0..cfg.tasks.len() {
            let (y, mask) = (b.label(t), b.mask(t));
            for r in 0..b.rows {
                if mask[r] != 0.0 {
                    self.tasks[t][b.segment[r] as usize].push(y[r] as f64);
                }
            }
        }
        if cfg.columns.request_id.is_some() {
            self.requests.extend(&b.request_id);
        }
    }
}
