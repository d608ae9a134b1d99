//! Experiment config: TOML parsed into [`wire::ConfigFile`] (unknown keys rejected),
//! then validated into [`ExperimentConfig`]. Every error names the file and the key
//! path (`features.categorical[2].dim`) and says what was expected.

pub mod calibration;
pub mod distill;
pub mod eval;
pub mod groups;
pub mod keys;
pub mod model;
pub mod wire;

use crate::error::{DataError, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
pub use wire::{DistributedReading, Format, LabelTransform, LibsvmFieldMode, Pooling, TaskKind, TeacherKind};

/// A validated experiment config.
#[derive(Debug, Clone)]
pub struct ExperimentConfig {
    /// The file it came from.
    pub path: PathBuf,
    /// Relative data paths resolve against this directory (the config file's).
    pub base_dir: PathBuf,
    pub data: DataConfig,
    pub tables: Vec<TableSpec>,
    pub categorical: Vec<CategoricalFeature>,
    pub dense: Vec<DenseFeature>,
    /// `[feature_groups]`, validated, in name order; empty when the file has none.
    pub feature_groups: Vec<groups::FeatureGroup>,
    pub tasks: Vec<TaskSpec>,
    pub columns: SpecialColumns,
    /// `[model]`, validated against the tasks; `None` when the file has none.
    pub model: Option<model::ModelSection>,
    /// What the head and the position tower read (resolved feature groups); `None`
    /// when the file has no `[model]`.
    pub inputs: Option<groups::ModelInputs>,
    /// `[train]`, validated (all keys have defaults).
    pub train: model::TrainSection,
    /// `[distill]`, validated; `None` when the file has none.
    pub distill: Option<distill::DistillConfig>,
    /// `[eval]`, validated; `None` when the file has none.
    pub eval: Option<eval::EvalConfig>,
    /// `[calibration]`, validated; `None` when the file has none.
    pub calibration: Option<calibration::CalibrationSection>,
    /// The file as parsed, kept verbatim for checkpoint manifests.
    pub wire: wire::ConfigFile,
}

#[derive(Debug, Clone)]
pub enum SourceFormat {
    Parquet,
    Csv(CsvOptions),
    Libsvm(LibsvmOptions),
}

#[derive(Debug, Clone)]
pub struct CsvOptions {
    pub delimiter: u8,
    pub header: bool,
    /// Column names when the file has no header.
    pub columns: Option<Vec<String>>,
    pub multi_value_separator: char,
}

#[derive(Debug, Clone)]
pub struct LibsvmOptions {
    pub fields: Vec<String>,
    pub label: String,
    pub field_mode: LibsvmFieldMode,
}

#[derive(Debug, Clone)]
pub struct DataConfig {
    pub format: SourceFormat,
    pub max_bad_rows: u64,
    pub batch_size: usize,
    pub shuffle_buffer: usize,
    pub prefetch_batches: usize,
    /// Resolved: never 0.
    pub decode_threads: usize,
    pub chunk_rows: usize,
    pub seed: u64,
    /// Data-parallel training: what each rank reads of the training split.
    pub distributed_reading: DistributedReading,
    pub splits: BTreeMap<String, Split>,
}

/// Which files (and optionally which rows) make up train, validation or test.
#[derive(Debug, Clone)]
pub struct Split {
    pub name: String,
    /// Absolute glob patterns.
    pub patterns: Vec<String>,
    /// Inclusive `YYYY-MM-DD` range matched against a `day=…` path component.
    pub days: Option<(String, String)>,
    /// Keep rows whose hash of (file name, row number) falls in `[from, to)`.
    pub rows: Option<(f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct TableSpec {
    pub name: String,
    pub dim: usize,
    pub kind: TableKind,
}

#[derive(Debug, Clone)]
pub enum TableKind {
    /// Row = xxh3(value) mod buckets (see [`crate::hash`]).
    Hashed { buckets: u64 },
    /// Row = position in `values`; anything else maps to the out-of-vocabulary row
    /// `values.len()`.
    Vocabulary { values: Vec<String>, index: HashMap<String, u32> },
    /// `vocabulary = { from = "train", … }`: the values of the training split that
    /// `rule` keeps, built by the statistics pass ([`crate::stats::fit_train_stats`])
    /// and stored with the run, then mapped like [`TableKind::Vocabulary`]. `built` is
    /// `None` until [`ExperimentConfig::with_vocabularies`] fills it in; until then the
    /// table has only its out-of-vocabulary row, and only the statistics pass may encode
    /// it ([`crate::Encoder::new`] refuses it otherwise).
    Learned { rule: LearnedVocabulary, built: Option<Vocabulary> },
}

/// Which values of the training split a learned vocabulary keeps: those seen at least
/// `min_count` times, the `max_size` most frequent of them (ties broken by the value's
/// text, ascending), in that order (row 0 is the most frequent value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnedVocabulary {
    pub min_count: u64,
    pub max_size: Option<u64>,
}

/// A vocabulary: `values` in row order and its index.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocabulary {
    pub values: Vec<String>,
    pub index: HashMap<String, u32>,
}

impl Vocabulary {
    /// Indexes `values` (row = position); `Err(value)` names a duplicate.
    pub fn new(values: Vec<String>) -> std::result::Result<Self, String> {
        let mut index = HashMap::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            if index.insert(v.clone(), i as u32).is_some() {
                return Err(v.clone());
            }
        }
        Ok(Vocabulary { values, index })
    }
}

impl TableKind {
    /// The values and index of a vocabulary table (given or built); `None` for hashed
    /// tables and learned ones not built yet.
    pub fn vocabulary(&self) -> Option<(&[String], &HashMap<String, u32>)> {
        match self {
            TableKind::Vocabulary { values, index } => Some((values, index)),
            TableKind::Learned { built: Some(v), .. } => Some((&v.values, &v.index)),
            _ => None,
        }
    }
}

impl TableSpec {
    /// Number of embedding rows (a vocabulary's values plus the out-of-vocabulary row;
    /// 1 for a learned vocabulary not built yet).
    pub fn rows(&self) -> u64 {
        match &self.kind {
            TableKind::Hashed { buckets } => *buckets,
            TableKind::Vocabulary { values, .. } => values.len() as u64 + 1,
            TableKind::Learned { built, .. } => built.as_ref().map_or(0, |v| v.values.len() as u64) + 1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CategoricalFeature {
    pub name: String,
    pub column: String,
    /// Index into [`ExperimentConfig::tables`].
    pub table: usize,
    /// Some for multi-valued features.
    pub pooling: Option<Pooling>,
}

#[derive(Debug, Clone)]
pub struct DenseFeature {
    pub name: String,
    pub column: String,
    pub log1p: bool,
    pub clip: Option<(f64, f64)>,
    pub standardize: bool,
    pub missing: f64,
    pub missing_indicator: bool,
}

#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub name: String,
    pub kind: TaskKind,
    pub label: String,
    pub transform: LabelTransform,
    pub mask: Option<String>,
    pub weight: f64,
    pub teacher: Option<Teacher>,
    /// The loss of a regression task (binary tasks always use BCE).
    pub regression_loss: RegressionLoss,
}

/// Loss of a regression task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RegressionLoss {
    /// `(p - t)²`.
    Mse,
    /// `½d²` for `|d| ≤ delta`, `delta·(|d| - ½delta)` beyond.
    Huber { delta: f64 },
}

#[derive(Debug, Clone)]
pub struct Teacher {
    pub column: String,
    pub kind: TeacherKind,
}

#[derive(Debug, Clone)]
pub struct EnumColumn {
    pub column: String,
    pub values: Vec<String>,
}

impl EnumColumn {
    pub fn id_of(&self, v: &str) -> Option<u32> {
        self.values.iter().position(|x| x == v).map(|i| i as u32)
    }
}

#[derive(Debug, Clone)]
pub struct PositionColumn {
    pub column: String,
    pub max: u32,
}

#[derive(Debug, Clone, Default)]
pub struct SpecialColumns {
    pub sample_weight: Option<String>,
    pub segment: Option<EnumColumn>,
    pub device: Option<EnumColumn>,
    pub position: Option<PositionColumn>,
    pub request_id: Option<String>,
    /// `columns.keep`, then the columns `[eval]` reads that it does not list.
    pub keep: Vec<String>,
}

/// A file that does not match the schema, as a [`DataError::ConfigKey`] naming the key.
/// An expert table's error names the key inside the table and the kind
/// (`model.experts[1].cross_layers`: "does not apply to a masknet expert"): the table
/// is read whole before its `kind` is known, so serde's path ends at the table and the
/// table is read again here, through [`model::ExpertSection::from_table`].
fn schema_error(file: &Path, text: &str, e: serde_path_to_error::Error<toml::de::Error>) -> DataError {
    use serde_path_to_error::Segment;
    let mut key = e.path().to_string();
    let segments: Vec<&Segment> = e.path().iter().collect();
    // toml's message carries a source excerpt; keep only the reason.
    let mut message = e.inner().message().trim().to_string();
    // `model.experts[i]`, or a two-tower's `model.two_tower.<side>.experts[i]`.
    if let [Segment::Map { key: m }, ref tables @ .., Segment::Map { key: x }, Segment::Seq { index }] = segments[..] {
        let table =
            (m == "model" && x == "experts").then(|| text.parse::<toml::Table>().ok()).flatten().and_then(|doc| {
                let mut at = doc.get("model")?;
                for t in tables {
                    let Segment::Map { key } = t else { return None };
                    at = at.get(key.as_str())?;
                }
                at.get("experts")?.get(*index)?.as_table().cloned()
            });
        if let Some(Err(inner)) = table.map(model::ExpertSection::from_table) {
            if !inner.key.is_empty() {
                key = format!("{key}.{}", inner.key);
            }
            message = inner.message;
        }
    }
    DataError::ConfigKey { file: file.to_path_buf(), key, message }
}

impl ExperimentConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|source| DataError::Io { file: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is used for messages and as the base
    /// for relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| DataError::Config { file: path.to_path_buf(), message: format!("invalid TOML: {e}") })?;
        let wire: wire::ConfigFile = serde_path_to_error::deserialize(de).map_err(|e| schema_error(path, text, e))?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_wire(wire, path, &base_dir)
    }

    /// What early stopping watches (validated when the config loaded).
    pub fn monitor(&self) -> model::Monitor {
        let kinds: Vec<(&str, bool)> =
            self.tasks.iter().map(|t| (t.name.as_str(), t.kind == TaskKind::Binary)).collect();
        model::resolve_monitor(&self.train, &kinds).expect("validated when the config was loaded")
    }

    /// The same experiment with one seed for everything random: `[data] seed`
    /// (shuffling, sampling) and `[train] seed` (initialisation, dropout). `train --seed`.
    pub fn with_seed(&self, seed: u64) -> Result<Self> {
        let mut wire = self.wire.clone();
        wire.data.seed = seed;
        wire.train.seed = seed;
        Self::from_wire(wire, &self.path, &self.base_dir)
    }

    /// Replaces `[model]` (and `[train]` and `[feature_groups]`, when given) with those of
    /// a separate TOML file holding only those sections, and validates the result. A
    /// model file's groups name the data config's features, so such a file fits the data
    /// it was written for (e.g. a position tower over the simulator's features).
    pub fn with_model_file(&self, path: &Path) -> Result<Self> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ModelFile {
            model: model::ModelSection,
            train: Option<model::TrainSection>,
            feature_groups: Option<BTreeMap<String, Vec<String>>>,
        }
        let text =
            std::fs::read_to_string(path).map_err(|source| DataError::Io { file: path.to_path_buf(), source })?;
        let de = toml::Deserializer::parse(&text)
            .map_err(|e| DataError::Config { file: path.to_path_buf(), message: format!("invalid TOML: {e}") })?;
        let f: ModelFile = serde_path_to_error::deserialize(de).map_err(|e| schema_error(path, &text, e))?;
        let mut wire = self.wire.clone();
        wire.model = Some(f.model);
        if let Some(t) = f.train {
            wire.train = t;
        }
        if let Some(g) = f.feature_groups {
            wire.feature_groups = g;
        }
        Self::from_wire(wire, &self.path, &self.base_dir).map_err(|e| match e {
            DataError::ConfigKey { key, message, .. } => {
                DataError::ConfigKey { file: path.to_path_buf(), key, message }
            }
            other => other,
        })
    }

    /// Validates a parsed file.
    pub fn from_wire(wire: wire::ConfigFile, path: &Path, base_dir: &Path) -> Result<Self> {
        let v = Validator { file: path };
        if wire.version != 1 {
            return Err(v.err("version", format!("expected 1, found {}", wire.version)));
        }
        let data = v.data(&wire.data, base_dir)?;
        let mut tables = Vec::new();
        let mut table_ids = HashMap::new();
        for (name, t) in &wire.tables {
            let key = format!("tables.{name}");
            let kind = v.table_kind(&key, t.buckets, &t.vocabulary, &t.vocabulary_file, base_dir)?;
            let kind =
                kind.ok_or_else(|| v.err(&key, "expected one of `buckets`, `vocabulary` or `vocabulary_file`".into()))?;
            v.positive(&format!("{key}.dim"), t.dim)?;
            table_ids.insert(name.clone(), tables.len());
            tables.push(TableSpec { name: name.clone(), dim: t.dim, kind });
        }
        let mut names = HashSet::new();
        let mut categorical = Vec::new();
        let mut used_tables = HashSet::new();
        for (i, c) in wire.features.categorical.iter().enumerate() {
            let key = format!("features.categorical[{i}]");
            v.unique_name(&mut names, &format!("{key}.name"), &c.name)?;
            let inline = v.table_kind(&key, c.buckets, &c.vocabulary, &c.vocabulary_file, base_dir)?;
            let table = match (&c.table, inline) {
                (Some(t), None) => {
                    if c.dim.is_some() {
                        return Err(v.err(
                            &format!("{key}.dim"),
                            "not allowed with `table`: the shared table sets the dim".into(),
                        ));
                    }
                    *table_ids.get(t).ok_or_else(|| {
                        v.err(
                            &format!("{key}.table"),
                            format!("no table `{t}` under [tables] (have: {})", join(wire.tables.keys())),
                        )
                    })?
                }
                (None, Some(kind)) => {
                    let dim = c.dim.ok_or_else(|| {
                        v.err(&format!("{key}.dim"), "missing: expected the embedding dimension".into())
                    })?;
                    v.positive(&format!("{key}.dim"), dim)?;
                    tables.push(TableSpec { name: c.name.clone(), dim, kind });
                    tables.len() - 1
                }
                (Some(_), Some(_)) => {
                    return Err(v.err(&key, "give either `table` or an inline `buckets`/`vocabulary`, not both".into()))
                }
                (None, None) => {
                    return Err(v.err(&key, "expected `table`, `buckets`, `vocabulary` or `vocabulary_file`".into()))
                }
            };
            used_tables.insert(table);
            categorical.push(CategoricalFeature {
                name: c.name.clone(),
                column: c.column.clone().unwrap_or_else(|| c.name.clone()),
                table,
                pooling: c.multi_valued.as_ref().map(|m| m.pooling),
            });
        }
        for (name, id) in &table_ids {
            if !used_tables.contains(id) {
                return Err(v.err(&format!("tables.{name}"), "declared but no feature uses it".into()));
            }
        }
        let mut dense = Vec::new();
        for (i, d) in wire.features.dense.iter().enumerate() {
            let key = format!("features.dense[{i}]");
            v.unique_name(&mut names, &format!("{key}.name"), &d.name)?;
            if let Some([lo, hi]) = d.clip {
                if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                    return Err(v.err(
                        &format!("{key}.clip"),
                        format!("expected [low, high] with low < high, found [{lo}, {hi}]"),
                    ));
                }
            }
            if !d.missing.is_finite() {
                return Err(v.err(&format!("{key}.missing"), "expected a finite number".into()));
            }
            dense.push(DenseFeature {
                name: d.name.clone(),
                column: d.column.clone().unwrap_or_else(|| d.name.clone()),
                log1p: d.log1p,
                clip: d.clip.map(|[a, b]| (a, b)),
                standardize: d.standardize,
                missing: d.missing,
                missing_indicator: d.missing_indicator,
            });
        }
        if categorical.is_empty() && dense.is_empty() {
            return Err(v.err("features", "expected at least one categorical or dense feature".into()));
        }
        if wire.tasks.is_empty() {
            return Err(v.err("tasks", "expected at least one [[tasks]] entry".into()));
        }
        let mut task_names = HashSet::new();
        let mut tasks = Vec::new();
        for (i, t) in wire.tasks.iter().enumerate() {
            let key = format!("tasks[{i}]");
            v.unique_name(&mut task_names, &format!("{key}.name"), &t.name)?;
            if t.kind == TaskKind::Binary && matches!(t.label_transform, Some(LabelTransform::Log1p)) {
                return Err(
                    v.err(&format!("{key}.label_transform"), "only regression tasks take a label transform".into())
                );
            }
            if !(t.weight.is_finite() && t.weight >= 0.0) {
                return Err(
                    v.err(&format!("{key}.weight"), format!("expected a finite number >= 0, found {}", t.weight))
                );
            }
            let regression_loss = match (t.kind, t.loss, t.huber_delta) {
                (TaskKind::Binary, Some(_), _) | (TaskKind::Binary, _, Some(_)) => {
                    return Err(v.err(
                        &format!("{key}.loss"),
                        "only regression tasks choose a loss (binary tasks use BCE)".into(),
                    ))
                }
                (_, Some(wire::RegressionLossName::Huber), d) => {
                    let delta = d.unwrap_or(1.0);
                    if !(delta.is_finite() && delta > 0.0) {
                        return Err(
                            v.err(&format!("{key}.huber_delta"), format!("expected a number > 0, found {delta}"))
                        );
                    }
                    RegressionLoss::Huber { delta }
                }
                (_, _, Some(_)) => {
                    return Err(v.err(&format!("{key}.huber_delta"), "only with loss = \"huber\"".into()))
                }
                _ => RegressionLoss::Mse,
            };
            tasks.push(TaskSpec {
                regression_loss,
                name: t.name.clone(),
                kind: t.kind,
                label: t.label.clone(),
                transform: t.label_transform.unwrap_or(LabelTransform::None),
                mask: t.mask.clone(),
                weight: t.weight,
                teacher: t.teacher.as_ref().map(|s| Teacher { column: s.column.clone(), kind: s.kind }),
            });
        }
        let c = &wire.columns;
        let enum_col = |key: &str, e: &Option<wire::EnumColumnSection>| -> Result<Option<EnumColumn>> {
            match e {
                None => Ok(None),
                Some(e) if e.values.is_empty() => {
                    Err(v.err(&format!("columns.{key}.values"), "expected at least one value".into()))
                }
                Some(e) => {
                    let mut seen = HashSet::new();
                    for val in &e.values {
                        if !seen.insert(val) {
                            return Err(v.err(&format!("columns.{key}.values"), format!("duplicate value `{val}`")));
                        }
                    }
                    Ok(Some(EnumColumn { column: e.column.clone(), values: e.values.clone() }))
                }
            }
        };
        let columns = SpecialColumns {
            sample_weight: c.sample_weight.clone(),
            segment: enum_col("segment", &c.segment)?,
            device: enum_col("device", &c.device)?,
            position: match &c.position {
                Some(p) if p.max == 0 => {
                    return Err(v.err("columns.position.max", "expected a positive integer".into()))
                }
                Some(p) => Some(PositionColumn { column: p.column.clone(), max: p.max }),
                None => None,
            },
            request_id: c.request_id.clone(),
            keep: c.keep.clone(),
        };
        let feature_groups = groups::validate_groups(&wire.feature_groups, &categorical, &dense)
            .map_err(|(key, message)| v.err(&key, message))?;
        let inputs = match &wire.model {
            Some(m) => {
                model::validate_model(m, tasks.len()).map_err(|(key, message)| v.err(&key, message))?;
                model::validate_per_surface(m, columns.segment.as_ref().map(|s| s.values.len()))
                    .map_err(|(key, message)| v.err(&key, message))?;
                if let Some(ib) = m.two_tower.as_ref().and_then(|t| t.in_batch.as_ref()) {
                    match tasks.iter().find(|t| t.name == ib.task) {
                        None => {
                            return Err(v.err(
                                "model.two_tower.in_batch.task",
                                format!("no task named `{}` in [[tasks]]", ib.task),
                            ))
                        }
                        Some(t) if t.kind != TaskKind::Binary => {
                            return Err(v.err(
                                "model.two_tower.in_batch.task",
                                format!("task `{}` is not binary: the in-batch softmax needs positives", ib.task),
                            ))
                        }
                        Some(_) => {}
                    }
                }
                Some(
                    groups::resolve_inputs(
                        m,
                        &feature_groups,
                        &categorical,
                        &dense,
                        &tasks,
                        columns.position.as_ref().map(|p| p.column.as_str()),
                    )
                    .map_err(|(key, message)| v.err(&key, message))?,
                )
            }
            None => None,
        };
        model::validate_train(&wire.train).map_err(|(key, message)| v.err(&key, message))?;
        if let Some(name) = wire.train.replicated_tables.iter().find(|n| !tables.iter().any(|t| &t.name == *n)) {
            let have: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
            return Err(
                v.err("train.replicated_tables", format!("no embedding table `{name}` (tables: {})", have.join(", ")))
            );
        }
        let task_kinds: Vec<(&str, bool)> =
            tasks.iter().map(|t| (t.name.as_str(), t.kind == TaskKind::Binary)).collect();
        model::resolve_monitor(&wire.train, &task_kinds).map_err(|(key, message)| v.err(&key, message))?;
        let distill = match &wire.distill {
            Some(d) => {
                let info: Vec<distill::TaskInfo<'_>> = tasks
                    .iter()
                    .map(|t| distill::TaskInfo { name: &t.name, kind: t.kind, has_teacher_column: t.teacher.is_some() })
                    .collect();
                let has_request = columns.request_id.is_some();
                Some(
                    distill::validate_distill(d, &info, has_request, base_dir)
                        .map_err(|(key, message)| v.err(&key, message))?,
                )
            }
            None => None,
        };
        let mut columns = columns;
        let eval = eval::validate(&wire, &tasks, &mut columns).map_err(|(key, message)| v.err(&key, message))?;
        let calibration = match &wire.calibration {
            Some(c) => Some(
                calibration::validate_calibration(
                    c,
                    columns.segment.is_some(),
                    tasks.iter().any(|t| t.kind == TaskKind::Binary),
                    data.splits.contains_key("validation"),
                )
                .map_err(|(key, message)| v.err(&key, message))?,
            ),
            None => None,
        };
        Ok(ExperimentConfig {
            path: path.to_path_buf(),
            base_dir: base_dir.to_path_buf(),
            data,
            tables,
            categorical,
            dense,
            feature_groups,
            tasks,
            columns,
            model: wire.model.clone(),
            inputs,
            train: wire.train.clone(),
            distill,
            eval,
            calibration,
            wire,
        })
    }

    /// Tables whose vocabulary is learned from the training split (`vocabulary = { from =
    /// "train" }`), built or not, by name.
    pub fn learned_tables(&self) -> Vec<&TableSpec> {
        self.tables.iter().filter(|t| matches!(t.kind, TableKind::Learned { .. })).collect()
    }

    /// The learned vocabularies not built yet, by table name.
    pub fn unbuilt_vocabularies(&self) -> Vec<&str> {
        let unbuilt = |t: &&TableSpec| matches!(t.kind, TableKind::Learned { built: None, .. });
        self.tables.iter().filter(unbuilt).map(|t| t.name.as_str()).collect()
    }

    /// The built learned vocabularies, table name → values in row order: what a run
    /// stores (checkpoint manifest, `RUN/vocabularies.json`) so that evaluation, serving,
    /// `--resume` and `--init` map values to the rows training used.
    pub fn learned_vocabularies(&self) -> BTreeMap<String, Vec<String>> {
        self.tables
            .iter()
            .filter_map(|t| match &t.kind {
                TableKind::Learned { built: Some(v), .. } => Some((t.name.clone(), v.values.clone())),
                _ => None,
            })
            .collect()
    }

    /// The same config with the learned vocabularies `vocabularies` names set (table name
    /// → values in row order, as the statistics pass built them or a run stored them);
    /// learned tables it does not name stay as they were ([`Self::unbuilt_vocabularies`]).
    /// A name that is not a learned table, more than `max_size` values or a duplicate
    /// value is a [`DataError::Vocabulary`].
    pub fn with_vocabularies(&self, vocabularies: &BTreeMap<String, Vec<String>>) -> Result<Self> {
        let mut out = self.clone();
        for name in vocabularies.keys() {
            if !self.learned_tables().iter().any(|t| &t.name == name) {
                return Err(DataError::Vocabulary {
                    table: name.clone(),
                    message: "no table of this config learns its vocabulary from the training split".into(),
                });
            }
        }
        for t in &mut out.tables {
            let TableKind::Learned { rule, built } = &mut t.kind else { continue };
            let bad = |message: String| DataError::Vocabulary { table: t.name.clone(), message };
            let Some(values) = vocabularies.get(&t.name) else { continue };
            if rule.max_size.is_some_and(|m| values.len() as u64 > m) {
                return Err(bad(format!("{} values exceed max_size = {}", values.len(), rule.max_size.unwrap_or(0))));
            }
            let vocab = Vocabulary::new(values.clone()).map_err(|v| bad(format!("duplicate value `{v}`")))?;
            *built = Some(vocab);
        }
        Ok(out)
    }

    /// Width of the dense matrix in a batch: one column per dense feature plus one per
    /// missing indicator (indicators follow all the values, in feature order).
    pub fn dense_width(&self) -> usize {
        self.dense.len() + self.dense.iter().filter(|d| d.missing_indicator).count()
    }

    /// What the head reads: `[model] inputs` resolved, or (without `[model]`) every
    /// feature in config order.
    pub fn head_input(&self) -> groups::InputSpec {
        match &self.inputs {
            Some(i) => i.head.clone(),
            None => groups::InputSpec {
                groups: vec![groups::FeatureGroup {
                    name: groups::DEFAULT_GROUP.into(),
                    features: groups::all_features(self.categorical.len(), self.dense.len()),
                }],
            },
        }
    }

    /// What the gates read besides (or instead of) the experts' input (`[model.gate]
    /// inputs`, surface-aware gating); `None` without it.
    pub fn gate_input(&self) -> Option<groups::InputSpec> {
        self.inputs.as_ref().and_then(|i| i.gate.clone())
    }

    /// Features a scoring request need not carry: those only the position tower reads
    /// (not the head), since the tower does not run at evaluation and serving; for a
    /// two-tower model, the position features neither tower reads. Serving
    /// fills their columns with a neutral value and ignores them when sent.
    /// With `serve_position` the tower runs at serving, so only its position features
    /// (which the model sets to the fixed position) are free.
    pub fn request_free_features(&self) -> Vec<groups::FeatureRef> {
        if self.inputs.as_ref().is_some_and(|i| i.two_tower.is_some()) {
            // A two-tower model's position features: no tower reads them.
            let read = self.head_input().features();
            return groups::all_features(self.categorical.len(), self.dense.len())
                .into_iter()
                .filter(|f| !read.contains(f))
                .collect();
        }
        let Some(tower) = self.inputs.as_ref().and_then(|i| i.position_tower.as_ref()) else { return Vec::new() };
        if let Some(sp) = &tower.serve_position {
            return sp.features.iter().map(|&i| groups::FeatureRef::Categorical(i)).collect();
        }
        let mut read = self.head_input().features();
        read.extend(self.gate_input().iter().flat_map(groups::InputSpec::features));
        tower.input.features().into_iter().filter(|f| !read.contains(f)).collect()
    }

    /// Source columns a scoring request need not carry: every feature reading them is in
    /// [`ExperimentConfig::request_free_features`].
    pub fn request_free_columns(&self) -> Vec<String> {
        let free = self.request_free_features();
        let column = |f: groups::FeatureRef| match f {
            groups::FeatureRef::Categorical(i) => &self.categorical[i].column,
            groups::FeatureRef::Dense(i) => &self.dense[i].column,
        };
        let mut out: Vec<String> = free
            .iter()
            .map(|&f| column(f).clone())
            .filter(|c| {
                groups::all_features(self.categorical.len(), self.dense.len())
                    .into_iter()
                    .filter(|&f| column(f) == c)
                    .all(|f| free.contains(&f))
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// A feature's config name.
    pub fn feature_name(&self, f: groups::FeatureRef) -> &str {
        match f {
            groups::FeatureRef::Categorical(i) => &self.categorical[i].name,
            groups::FeatureRef::Dense(i) => &self.dense[i].name,
        }
    }

    /// Index of `column` among the carried numeric columns (`columns.keep` and those of
    /// `[eval]`; [`crate::Batch::kept`]).
    pub fn kept_index(&self, column: &str) -> Option<usize> {
        self.columns.keep.iter().position(|k| k == column)
    }

    /// Segment (surface) names in id order; `["all"]` when no segment column is set.
    pub fn segment_names(&self) -> Vec<String> {
        match &self.columns.segment {
            Some(s) => s.values.clone(),
            None => vec!["all".into()],
        }
    }

    pub fn split(&self, name: &str) -> Result<&Split> {
        self.data.splits.get(name).ok_or_else(|| DataError::ConfigKey {
            file: self.path.clone(),
            key: format!("data.splits.{name}"),
            message: format!("no such split (have: {})", join(self.data.splits.keys())),
        })
    }

    /// Every source column a reader must provide, deduplicated, in a stable order.
    pub fn required_columns(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |c: &str| {
            if !out.iter().any(|x| x == c) {
                out.push(c.to_string());
            }
        };
        for c in &self.categorical {
            push(&c.column);
        }
        for d in &self.dense {
            push(&d.column);
        }
        for t in &self.tasks {
            push(&t.label);
            if let Some(m) = &t.mask {
                push(m);
            }
            if let Some(te) = &t.teacher {
                push(&te.column);
            }
        }
        let s = &self.columns;
        for c in [&s.sample_weight, &s.request_id].into_iter().flatten() {
            push(c);
        }
        for e in [&s.segment, &s.device].into_iter().flatten() {
            push(&e.column);
        }
        if let Some(p) = &s.position {
            push(&p.column);
        }
        for k in &s.keep {
            push(k);
        }
        out
    }
}

fn join<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

struct Validator<'a> {
    file: &'a Path,
}

impl Validator<'_> {
    fn err(&self, key: &str, message: String) -> DataError {
        DataError::ConfigKey { file: self.file.to_path_buf(), key: key.to_string(), message }
    }

    fn positive(&self, key: &str, n: usize) -> Result<()> {
        if n == 0 {
            return Err(self.err(key, "expected a positive integer, found 0".into()));
        }
        Ok(())
    }

    fn unique_name(&self, seen: &mut HashSet<String>, key: &str, name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(self.err(key, "expected a non-empty name".into()));
        }
        if !seen.insert(name.to_string()) {
            return Err(self.err(key, format!("duplicate name `{name}`")));
        }
        Ok(())
    }

    fn table_kind(
        &self,
        key: &str,
        buckets: Option<u64>,
        vocab: &Option<wire::VocabularySection>,
        vocab_file: &Option<String>,
        base_dir: &Path,
    ) -> Result<Option<TableKind>> {
        let given = buckets.is_some() as u8 + vocab.is_some() as u8 + vocab_file.is_some() as u8;
        if given > 1 {
            return Err(self.err(key, "give only one of `buckets`, `vocabulary`, `vocabulary_file`".into()));
        }
        if let Some(b) = buckets {
            if b == 0 || b > u32::MAX as u64 {
                return Err(self.err(&format!("{key}.buckets"), format!("expected 1..=4294967295, found {b}")));
            }
            return Ok(Some(TableKind::Hashed { buckets: b }));
        }
        let values = match (vocab, vocab_file) {
            (Some(wire::VocabularySection::Learned(l)), _) => {
                if l.min_count == 0 {
                    return Err(self.err(
                        &format!("{key}.vocabulary.min_count"),
                        "expected an integer >= 1 (values seen fewer times map to the out-of-vocabulary row)".into(),
                    ));
                }
                if l.max_size == Some(0) || l.max_size.is_some_and(|m| m >= u32::MAX as u64) {
                    return Err(self.err(
                        &format!("{key}.vocabulary.max_size"),
                        format!("expected 1..=4294967294 (absent = no cap), found {}", l.max_size.unwrap_or(0)),
                    ));
                }
                let rule = LearnedVocabulary { min_count: l.min_count, max_size: l.max_size };
                return Ok(Some(TableKind::Learned { rule, built: None }));
            }
            (Some(wire::VocabularySection::Values(v)), _) => v.clone(),
            (_, Some(f)) => {
                let p = base_dir.join(f);
                let text = std::fs::read_to_string(&p).map_err(|e| {
                    self.err(&format!("{key}.vocabulary_file"), format!("cannot read {}: {e}", p.display()))
                })?;
                text.lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
            }
            (None, None) => return Ok(None),
        };
        let Vocabulary { values, index } = Vocabulary::new(values)
            .map_err(|v| self.err(&format!("{key}.vocabulary"), format!("duplicate value `{v}`")))?;
        Ok(Some(TableKind::Vocabulary { values, index }))
    }

    fn data(&self, d: &wire::DataSection, base_dir: &Path) -> Result<DataConfig> {
        self.positive("data.batch_size", d.batch_size)?;
        self.positive("data.chunk_rows", d.chunk_rows)?;
        self.positive("data.prefetch_batches", d.prefetch_batches)?;
        let format = match d.format {
            Format::Parquet => {
                if d.csv.is_some() || d.libsvm.is_some() {
                    return Err(
                        self.err("data", "[data.csv] / [data.libsvm] do not apply to format = \"parquet\"".into())
                    );
                }
                SourceFormat::Parquet
            }
            Format::Csv => {
                let c = d.csv.clone().unwrap_or(wire::CsvSection {
                    delimiter: ",".into(),
                    header: true,
                    columns: None,
                    multi_value_separator: "|".into(),
                });
                let delim = match c.delimiter.as_bytes() {
                    [b] if b.is_ascii() => *b,
                    _ => {
                        return Err(self.err(
                            "data.csv.delimiter",
                            format!("expected one ASCII character, found {:?}", c.delimiter),
                        ))
                    }
                };
                let mut sep = c.multi_value_separator.chars();
                let mv = match (sep.next(), sep.next()) {
                    (Some(ch), None) if ch.is_ascii() => ch,
                    _ => return Err(self.err("data.csv.multi_value_separator", "expected one ASCII character".into())),
                };
                if !c.header && c.columns.is_none() {
                    return Err(self.err(
                        "data.csv.columns",
                        "required when header = false: the column names in file order".into(),
                    ));
                }
                SourceFormat::Csv(CsvOptions {
                    delimiter: delim,
                    header: c.header,
                    columns: c.columns,
                    multi_value_separator: mv,
                })
            }
            Format::Libsvm => {
                let l = d.libsvm.clone().ok_or_else(|| {
                    self.err("data.libsvm", "required for format = \"libsvm\": field names and field_mode".into())
                })?;
                if l.fields.is_empty() {
                    return Err(self.err("data.libsvm.fields", "expected at least one field name".into()));
                }
                SourceFormat::Libsvm(LibsvmOptions { fields: l.fields, label: l.label, field_mode: l.field_mode })
            }
        };
        if d.splits.is_empty() {
            return Err(self.err("data.splits", "expected at least one split, e.g. [data.splits.train]".into()));
        }
        let mut splits = BTreeMap::new();
        for (name, s) in &d.splits {
            let key = format!("data.splits.{name}");
            if s.paths.is_empty() {
                return Err(self.err(&format!("{key}.paths"), "expected at least one glob".into()));
            }
            let patterns = s
                .paths
                .iter()
                .map(|p| {
                    let p = Path::new(p);
                    if p.is_absolute() { p.to_path_buf() } else { base_dir.join(p) }.to_string_lossy().into_owned()
                })
                .collect();
            let days = match &s.days {
                Some(r) => {
                    for (k, val) in [("from", &r.from), ("to", &r.to)] {
                        if !is_day(val) {
                            return Err(self.err(
                                &format!("{key}.days.{k}"),
                                format!("expected a date YYYY-MM-DD, found {val:?}"),
                            ));
                        }
                    }
                    if r.from > r.to {
                        return Err(
                            self.err(&format!("{key}.days"), format!("`from` {} is after `to` {}", r.from, r.to))
                        );
                    }
                    Some((r.from.clone(), r.to.clone()))
                }
                None => None,
            };
            let rows = match s.rows {
                Some(r) if !(0.0 <= r.from && r.from < r.to && r.to <= 1.0) => {
                    return Err(self.err(
                        &format!("{key}.rows"),
                        format!("expected 0 <= from < to <= 1, found from = {}, to = {}", r.from, r.to),
                    ))
                }
                Some(r) => Some((r.from, r.to)),
                None => None,
            };
            splits.insert(name.clone(), Split { name: name.clone(), patterns, days, rows });
        }
        let decode_threads = if d.decode_threads == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            d.decode_threads
        };
        Ok(DataConfig {
            format,
            max_bad_rows: d.max_bad_rows,
            batch_size: d.batch_size,
            shuffle_buffer: d.shuffle_buffer,
            prefetch_batches: d.prefetch_batches,
            decode_threads,
            chunk_rows: d.chunk_rows,
            seed: d.seed,
            distributed_reading: d.distributed_reading,
            splits,
        })
    }
}

/// `YYYY-MM-DD` with plausible month and day.
pub fn is_day(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if !(digits(0..4) && digits(5..7) && digits(8..10)) {
        return false;
    }
    let m: u32 = s[5..7].parse().unwrap_or(0);
    let d: u32 = s[8..10].parse().unwrap_or(0);
    (1..=12).contains(&m) && (1..=31).contains(&d)
}
