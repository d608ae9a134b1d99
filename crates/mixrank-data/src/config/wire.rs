//! The on-disk (TOML) shape of an experiment config.
//!
//! Stage one of two: these structs mirror the file exactly and reject unknown keys
//! (`deny_unknown_fields`). [`super::ExperimentConfig::from_wire`] then checks
//! cross-references and ranges and builds the validated, typed config.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Config format version; only 1 exists.
    #[serde(default = "one")]
    pub version: u32,
    pub data: DataSection,
    /// Named embedding tables that several categorical features may share.
    #[serde(default)]
    pub tables: BTreeMap<String, TableSection>,
    pub features: FeaturesSection,
    /// Named groups of features (`user = ["user_id", "user_activity"]`) that parts of the
    /// model read: `[model] inputs`, `[model.position_tower] inputs`. Absent: the head
    /// reads every feature. Not written when empty, so configs without it serialise as
    /// before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub feature_groups: BTreeMap<String, Vec<String>>,
    pub tasks: Vec<TaskSection>,
    #[serde(default)]
    pub columns: ColumnsSection,
    /// The architecture; required by `train`, not by data commands.
    pub model: Option<super::model::ModelSection>,
    #[serde(default)]
    pub train: super::model::TrainSection,
    /// Knowledge distillation from a teacher; absent = labels only.
    pub distill: Option<super::distill::DistillSection>,
    /// Metrics against ground truth and the auction replay of `eval` / `compare`.
    pub eval: Option<super::eval::EvalSection>,
    /// A calibration layer fitted on the validation split after training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<super::calibration::CalibrationSection>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Parquet,
    Csv,
    Libsvm,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub format: Format,
    /// Bad rows tolerated (skipped, counted and reported) before a pass fails.
    #[serde(default)]
    pub max_bad_rows: u64,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Rows held in the shuffle buffer; 0 or 1 disables shuffling.
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
    /// Ready batches queued ahead of the consumer.
    #[serde(default = "default_prefetch")]
    pub prefetch_batches: usize,
    /// Decode threads; 0 means one per core.
    #[serde(default)]
    pub decode_threads: usize,
    /// Rows decoded per chunk inside one file.
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Data-parallel training: what each rank reads (docs/distributed.md).
    #[serde(default, skip_serializing_if = "DistributedReading::is_replicated")]
    pub distributed_reading: DistributedReading,
    pub csv: Option<CsvSection>,
    pub libsvm: Option<LibsvmSection>,
    pub splits: BTreeMap<String, SplitSection>,
}

/// What each rank of a data-parallel job reads of the training split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DistributedReading {
    /// Every rank reads every row, forms the same global batches and trains on its
    /// slice of each: N ranks train the one-process run (up to summation order).
    #[default]
    Replicated,
    /// Each rank reads only its share of the split's units (row groups or files) and
    /// forms its part of each global batch from them: 1/N of the decoding per rank, and
    /// batches composed differently from a one-process run's.
    Sharded,
}

impl DistributedReading {
    pub fn is_replicated(&self) -> bool {
        *self == DistributedReading::Replicated
    }
}

fn default_batch_size() -> usize {
    2048
}
fn default_shuffle_buffer() -> usize {
    65_536
}
fn default_prefetch() -> usize {
    8
}
fn default_chunk_rows() -> usize {
    8192
}
fn default_seed() -> u64 {
    42
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSection {
    /// One character, e.g. "," or "\t".
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    #[serde(default = "yes")]
    pub header: bool,
    /// Column names, required when `header = false`.
    pub columns: Option<Vec<String>>,
    /// Separator inside a multi-valued cell.
    #[serde(default = "default_mv_sep")]
    pub multi_value_separator: String,
}

fn default_delimiter() -> String {
    ",".into()
}
fn default_mv_sep() -> String {
    "|".into()
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LibsvmFieldMode {
    /// `label idx:val idx:val …`; the i-th pair belongs to the i-th field (Frappe).
    Positional,
    /// `label field:idx:val …` (libFM with explicit field numbers).
    Libfm,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LibsvmSection {
    /// Field names in field-number order; each becomes a column of feature indices.
    pub fields: Vec<String>,
    /// Name given to the label column.
    #[serde(default = "default_label")]
    pub label: String,
    pub field_mode: LibsvmFieldMode,
}

fn default_label() -> String {
    "label".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSection {
    /// Globs relative to the config file's directory.
    pub paths: Vec<String>,
    /// Keep only files under a `day=YYYY-MM-DD` directory within this inclusive range.
    pub days: Option<DayRange>,
    /// Keep a deterministic fraction of rows, chosen by hashing (file name, row number).
    pub rows: Option<RowFraction>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DayRange {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RowFraction {
    pub from: f64,
    pub to: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableSection {
    pub buckets: Option<u64>,
    pub vocabulary: Option<VocabularySection>,
    /// A text file, one value per line, relative to the config file's directory.
    pub vocabulary_file: Option<String>,
    pub dim: usize,
}

/// `vocabulary = …` of a table or an inline categorical feature: the values themselves
/// (`["de", "fr"]`), or a vocabulary built from the training split (`"train"`, short for
/// `{ from = "train" }`, or `{ from = "train", min_count = 2, max_size = 100000 }`).
///
/// Written back as a list or as the full table (`"train"` becomes `{ from = "train",
/// min_count = 1 }`). Read through a struct request, so [`super::keys`] records the
/// table form's keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum VocabularySection {
    Values(Vec<String>),
    Learned(LearnedVocabularySection),
}

/// `vocabulary = { from = "train", min_count = N, max_size = M }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LearnedVocabularySection {
    /// Where the values come from: only `"train"` (the training split).
    pub from: VocabularySource,
    /// Values seen fewer times go to the out-of-vocabulary row (default 1, at least 1).
    #[serde(default = "one_u64")]
    pub min_count: u64,
    /// At most this many values (the most frequent; ties by value); absent = no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
}

fn one_u64() -> u64 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VocabularySource {
    /// The `train` split, in the statistics pass before training.
    Train,
}

impl<'de> Deserialize<'de> for VocabularySection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, value::MapAccessDeserializer, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = VocabularySection;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of values, \"train\", or { from = \"train\", min_count = N, max_size = M }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<VocabularySection, E> {
                match v {
                    "train" => Ok(VocabularySection::Learned(LearnedVocabularySection {
                        from: VocabularySource::Train,
                        min_count: 1,
                        max_size: None,
                    })),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<VocabularySection, A::Error> {
                let mut values = Vec::new();
                while let Some(v) = seq.next_element::<String>()? {
                    values.push(v);
                }
                Ok(VocabularySection::Values(values))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<VocabularySection, A::Error> {
                LearnedVocabularySection::deserialize(MapAccessDeserializer::new(map)).map(VocabularySection::Learned)
            }
        }
        d.deserialize_struct("LearnedVocabularySection", &["from", "min_count", "max_size"], V)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesSection {
    #[serde(default)]
    pub categorical: Vec<CategoricalSection>,
    #[serde(default)]
    pub dense: Vec<DenseSection>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Sum,
    Mean,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MultiValuedSection {
    pub pooling: Pooling,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CategoricalSection {
    pub name: String,
    /// Source column; defaults to `name`.
    pub column: Option<String>,
    pub buckets: Option<u64>,
    pub vocabulary: Option<VocabularySection>,
    pub vocabulary_file: Option<String>,
    pub dim: Option<usize>,
    /// Name of a shared table under `[tables]`.
    pub table: Option<String>,
    pub multi_valued: Option<MultiValuedSection>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DenseSection {
    pub name: String,
    pub column: Option<String>,
    /// Apply sign(x)·ln(1+|x|) before clipping.
    #[serde(default)]
    pub log1p: bool,
    pub clip: Option<[f64; 2]>,
    /// Standardise with mean/std from a pass over the training split.
    #[serde(default)]
    pub standardize: bool,
    /// Value used when the cell is null or empty (before transforms).
    #[serde(default)]
    pub missing: f64,
    /// Append a 0/1 column telling whether the value was missing.
    #[serde(default)]
    pub missing_indicator: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    Binary,
    Regression,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelTransform {
    None,
    Log1p,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TeacherKind {
    Probability,
    Logit,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSection {
    pub column: String,
    pub kind: TeacherKind,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    pub name: String,
    pub kind: TaskKind,
    pub label: String,
    pub label_transform: Option<LabelTransform>,
    /// Column whose non-zero value marks rows where this task's label counts.
    pub mask: Option<String>,
    #[serde(default = "unit_weight")]
    pub weight: f64,
    pub teacher: Option<TeacherSection>,
    /// Regression tasks: `"mse"` (default) or `"huber"`.
    pub loss: Option<RegressionLossName>,
    /// Huber threshold δ (default 1.0).
    pub huber_delta: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RegressionLossName {
    Mse,
    Huber,
}

fn unit_weight() -> f64 {
    1.0
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnsSection {
    pub sample_weight: Option<String>,
    /// Surface / view type.
    pub segment: Option<EnumColumnSection>,
    pub device: Option<EnumColumnSection>,
    pub position: Option<PositionSection>,
    /// Request or group id (for gAUC and in-request pairs).
    pub request_id: Option<String>,
    /// Numeric columns carried through untouched (e.g. simulator ground truth).
    #[serde(default)]
    pub keep: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnumColumnSection {
    pub column: String,
    /// The allowed values, in id order.
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PositionSection {
    pub column: String,
    /// Largest position id; larger positions are clamped to it.
    pub max: u32,
}
