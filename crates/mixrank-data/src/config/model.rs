//! The `[model]` and `[train]` sections: which architecture to build and how to train
//! it. Wire structs (TOML shape, unknown keys rejected) and their validation; the model
//! crate maps the validated types onto layers.

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// One task: one expert, one tower.
    SingleTask,
    /// One expert shared by all tasks, a tower per task (the DCNv2 production baseline).
    SharedBottom,
    /// One gate over the experts, shared by all tasks.
    Omoe,
    /// A gate per task over the experts (MMoE).
    Mmoe,
    /// Progressive layered extraction: shared and task-specific experts per level.
    Ple,
    /// The light ranker: a user tower and an item tower (each any of the heads above),
    /// one embedding per task each, scored by their dot product (`[model.two_tower]`).
    TwoTower,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationName {
    Relu,
    Gelu,
    Silu,
    Tanh,
    Sigmoid,
    Identity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpertKind {
    Dcnv2,
    Masknet,
    Finalmlp,
    Mlp,
}

impl ExpertKind {
    /// Every kind, in declaration order.
    pub const ALL: [ExpertKind; 4] = [ExpertKind::Dcnv2, ExpertKind::Masknet, ExpertKind::Finalmlp, ExpertKind::Mlp];

    /// The name in config files (`dcnv2`, `masknet`, `finalmlp`, `mlp`).
    pub fn name(self) -> &'static str {
        match self {
            ExpertKind::Dcnv2 => "dcnv2",
            ExpertKind::Masknet => "masknet",
            ExpertKind::Finalmlp => "finalmlp",
            ExpertKind::Mlp => "mlp",
        }
    }
}

impl std::fmt::Display for ExpertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Structure {
    /// DCNv2: cross net then MLP; MaskNet: blocks one after another.
    Stacked,
    /// DCNv2: cross net beside the MLP, outputs concatenated; MaskNet: blocks side by side.
    Parallel,
}

/// `[model]`.
///
/// Read through [`ModelSectionFile`] (the file's shape), which also tells which of the
/// keys with defaults (`expert_dim`, `gate`, `tower`) the file gave: a two-tower model
/// takes its heads' keys inside `[model.two_tower.user]` and `[model.two_tower.item]`
/// and refuses them at the top, so it must know whether they were written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(from = "ModelSectionFile", into = "ModelSectionFile")]
pub struct ModelSection {
    pub architecture: Architecture,
    /// Width every expert's output is projected to, so heterogeneous experts can be mixed.
    pub expert_dim: usize,
    /// The `[feature_groups]` the head reads, concatenated in this order. Absent: every
    /// feature in config order, less the features only the position tower's groups
    /// hold. Not written when absent, so configs without it serialise as before.
    pub inputs: Option<Vec<String>>,
    /// Optional layer shared by all experts, applied to the input first (YouTube, seed 003).
    pub shared: Option<MlpSection>,
    /// The experts: a kind and a count each. Shared-bottom and single-task take exactly
    /// one expert; a two-tower model takes none here (its towers list theirs).
    pub experts: Vec<ExpertSection>,
    pub gate: GateSection,
    pub tower: TowerSection,
    /// PLE only.
    pub ple: Option<PleSection>,
    /// YouTube's shallow position-bias tower (seed 003): a small MLP over bias features
    /// (position, device) whose logit is added to chosen tasks' logits in training only.
    pub position_tower: Option<PositionTowerSection>,
    /// `architecture = "two_tower"` only: the user and item towers and the score.
    pub two_tower: Option<TwoTowerSection>,
    /// Initialiser of every dense weight matrix (linear maps, cross weights, bilinear
    /// fusion): absent = each layer's default, Xavier uniform. For a two-tower model,
    /// both towers' weights.
    pub init: Option<InitSection>,
    /// Initialiser of the embedding tables: absent = `N(0, 0.01²)`.
    pub embedding_init: Option<InitSection>,
    /// Which keys with defaults the file gave.
    given: GivenKeys,
}

/// Which of `[model]`'s keys with defaults a file gave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct GivenKeys {
    expert_dim: bool,
    gate: bool,
    tower: bool,
}

impl ModelSection {
    /// The keys with defaults the file gave, of `expert_dim`, `gate` and `tower`.
    pub fn given_head_keys(&self) -> Vec<&'static str> {
        let g = self.given;
        [("expert_dim", g.expert_dim), ("gate", g.gate), ("tower", g.tower)]
            .into_iter()
            .filter_map(|(k, given)| given.then_some(k))
            .collect()
    }
}

/// `[model]` as the file holds it (see [`ModelSection`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSectionFile {
    pub architecture: Architecture,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expert_dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<String>>,
    pub shared: Option<MlpSection>,
    #[serde(default)]
    pub experts: Vec<ExpertSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tower: Option<TowerSection>,
    pub ple: Option<PleSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_tower: Option<PositionTowerSection>,
    /// Initialiser of every dense weight matrix (linear maps, cross weights, bilinear
    /// fusion): absent = each layer's default, Xavier uniform. Biases start at zero and
    /// normalisation scales at one whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitSection>,
    /// Initialiser of the embedding tables: absent = `N(0, 0.01²)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_init: Option<InitSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub two_tower: Option<TwoTowerSection>,
}

impl From<ModelSectionFile> for ModelSection {
    fn from(f: ModelSectionFile) -> Self {
        let given = GivenKeys { expert_dim: f.expert_dim.is_some(), gate: f.gate.is_some(), tower: f.tower.is_some() };
        ModelSection {
            architecture: f.architecture,
            expert_dim: f.expert_dim.unwrap_or_else(default_expert_dim),
            inputs: f.inputs,
            shared: f.shared,
            experts: f.experts,
            gate: f.gate.unwrap_or_default(),
            tower: f.tower.unwrap_or_default(),
            ple: f.ple,
            position_tower: f.position_tower,
            two_tower: f.two_tower,
            init: f.init,
            embedding_init: f.embedding_init,
            given,
        }
    }
}

impl From<ModelSection> for ModelSectionFile {
    /// Writes the keys with defaults the file gave, and for the heads (every
    /// architecture but two-tower) always, as earlier versions did.
    fn from(m: ModelSection) -> Self {
        let head = m.architecture != Architecture::TwoTower;
        let g = m.given;
        ModelSectionFile {
            architecture: m.architecture,
            expert_dim: (head || g.expert_dim).then_some(m.expert_dim),
            inputs: m.inputs,
            shared: m.shared,
            experts: m.experts,
            gate: (head || g.gate).then_some(m.gate),
            tower: (head || g.tower).then_some(m.tower),
            ple: m.ple,
            position_tower: m.position_tower,
            init: m.init,
            embedding_init: m.embedding_init,
            two_tower: m.two_tower,
        }
    }
}

/// `[model.two_tower]`: the light ranker (Pinterest's two-tower, seed 002). A user
/// tower over the request's feature groups and an item tower over the ad's, each any
/// head of mixrank ending in one `dim`-wide embedding per task; task `t`'s logit is
/// `⟨u_t, v_t⟩ (+ b_t)`, trained pointwise with the tasks' losses, so its outputs are
/// calibrated like the full ranker's. Parameters `user.*`, `item.*`, `score.<t>.bias`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TwoTowerSection {
    /// Width of each task's embedding (each tower's towers end in `dim` units).
    pub dim: usize,
    /// A learned bias per task added to the dot product. Default true.
    #[serde(default = "yes")]
    pub bias: bool,
    /// How a task's two embeddings make its logit: `"dot"` (default) or `"cosine"`
    /// (with `temperature`). Read through [`TwoTowerSection::score`].
    #[serde(default)]
    pub score: ScoreKind,
    /// The cosine score's temperature `τ > 0`: `logit = cos(u_t, v_t)/τ + b_t`. Required
    /// with `score = "cosine"`, refused with `"dot"`.
    pub temperature: Option<f32>,
    /// The user/context tower (computed once per request at serving).
    pub user: TowerHeadSection,
    /// The item (ad) tower (its embeddings can be computed offline and cached).
    pub item: TowerHeadSection,
    /// `[model.two_tower.in_batch]`: an in-batch-negative softmax loss added to the
    /// pointwise losses in training (retrieval use; its scores are not calibrated).
    pub in_batch: Option<InBatchSection>,
}

/// `[model.two_tower.in_batch]`: for one binary task, each positive row's user
/// embedding is scored against every item embedding of the batch, `s_ij = ⟨u_i, v_j⟩/τ`,
/// and the softmax cross-entropy of its own item (`j = i`) is added to the training
/// loss, weighted by the row's sample weight, times `weight`. The other rows' items are
/// the negatives (sampled by the logs, not by popularity: no correction is applied).
/// Training only; it pulls the scores toward a ranking over the batch, so the task's
/// outputs are no longer calibrated CTRs when it dominates the pointwise loss.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InBatchSection {
    /// The binary task whose positives (label 1, not masked) are the queries.
    pub task: String,
    /// Softmax temperature `τ > 0` (the scores are the towers' dot products, or their
    /// cosines under `score = "cosine"`, divided by `τ`).
    pub temperature: f32,
    /// The loss's weight beside the pointwise task losses (>= 0; default 1).
    #[serde(default = "unit_weight")]
    pub weight: f32,
}

fn unit_weight() -> f32 {
    1.0
}

fn yes() -> bool {
    true
}

/// `[model.two_tower] score`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreKind {
    /// `⟨u_t, v_t⟩ + b_t`.
    #[default]
    Dot,
    /// `cos(u_t, v_t)/τ + b_t` (`temperature = τ`).
    Cosine,
}

/// A two-tower model's score, validated: what the model builds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TwoTowerScore {
    /// `⟨u_t, v_t⟩ + b_t`.
    Dot,
    /// `cos(u_t, v_t)/τ + b_t`: both embeddings L2-normalised per row (with
    /// [`COSINE_EPS`] under the root), their dot product divided by `temperature`.
    Cosine { temperature: f32 },
}

/// The epsilon under the square root of the cosine score's row norms,
/// `1/sqrt(Σx² + eps)`: keeps an all-zero embedding finite (it scores 0).
pub const COSINE_EPS: f32 = 1e-12;

impl TwoTowerSection {
    /// The score, from `score` and `temperature` (as [`validate_model`] checked them;
    /// an unvalidated cosine section without a temperature reads as τ = 1).
    pub fn score(&self) -> TwoTowerScore {
        match self.score {
            ScoreKind::Dot => TwoTowerScore::Dot,
            ScoreKind::Cosine => TwoTowerScore::Cosine { temperature: self.temperature.unwrap_or(1.0) },
        }
    }
}

/// `[model.two_tower.user]` / `[model.two_tower.item]`: one tower, any head of mixrank
/// (the keys of `[model]` for that architecture), reading the named feature groups.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TowerHeadSection {
    /// The `[feature_groups]` this tower reads, concatenated in this order.
    pub inputs: Vec<String>,
    /// Any architecture but `two_tower`.
    pub architecture: Architecture,
    #[serde(default = "default_expert_dim")]
    pub expert_dim: usize,
    pub shared: Option<MlpSection>,
    pub experts: Vec<ExpertSection>,
    #[serde(default)]
    pub gate: GateSection,
    #[serde(default)]
    pub tower: TowerSection,
    pub ple: Option<PleSection>,
}

impl TowerHeadSection {
    /// The tower's head as a `[model]` section (what `build_head` reads).
    pub fn head(&self) -> ModelSection {
        ModelSection {
            architecture: self.architecture,
            expert_dim: self.expert_dim,
            inputs: Some(self.inputs.clone()),
            shared: self.shared.clone(),
            experts: self.experts.clone(),
            gate: self.gate.clone(),
            tower: self.tower.clone(),
            ple: self.ple.clone(),
            position_tower: None,
            two_tower: None,
            init: None,
            embedding_init: None,
            given: GivenKeys { expert_dim: true, gate: true, tower: true },
        }
    }
}

/// `[model] init` / `embedding_init`: a weight initialiser. A name for the fan-based
/// schemes (`"xavier_uniform"`), a one-key table for those with a parameter
/// (`{ normal = { std = 0.01 } }`). Fans of a weight `[fan_in, fan_out]` are its input
/// and output widths; of an embedding table `[rows, dim]`, `fan_in = dim` and
/// `fan_out = rows` (PyTorch's fans of an `nn.Embedding` weight).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum InitSection {
    /// `U(-a, a)`, `a = sqrt(6 / (fan_in + fan_out))`.
    XavierUniform,
    /// `N(0, std²)`, `std = sqrt(2 / (fan_in + fan_out))`.
    XavierNormal,
    /// `U(-a, a)`, `a = sqrt(6 / fan_in)`.
    HeUniform,
    /// `N(0, std²)`, `std = sqrt(2 / fan_in)`.
    HeNormal,
    /// `N(0, std²)`; std > 0.
    Normal { std: f64 },
    /// `U(-a, a)`; a > 0.
    Uniform { a: f64 },
}

/// `[model.position_tower]`: a small MLP over feature groups (default: the group
/// `bias`) whose logit is added to the chosen tasks' logits in training and not at
/// evaluation or serving, where position is treated as missing (Zhao et al. 2019, the
/// shallow tower). Trained jointly, it absorbs the examination effect of position so
/// the head learns appeal. Parameters `logit_sources.0.*`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PositionTowerSection {
    /// Hidden sizes before the logit; empty = a linear map to the logit. Default `[16]`.
    #[serde(default = "default_position_hidden")]
    pub hidden: Vec<usize>,
    /// Activation of the hidden layers.
    #[serde(default = "relu")]
    pub activation: ActivationName,
    /// Feature dropout on the tower's input: each feature of each row is zeroed (read as
    /// missing) with this probability, so the tower does not lean on position alone
    /// (YouTube: 10%). In `[0, 1)`.
    #[serde(default = "default_feature_dropout")]
    pub dropout: f64,
    /// The tasks whose logits it adds to; absent = every task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<String>>,
    /// The `[feature_groups]` it reads, concatenated in this order. Default `["bias"]`.
    #[serde(default = "default_position_inputs")]
    pub inputs: Vec<String>,
    /// Absent (default): the tower is off at evaluation and serving (position treated
    /// as missing, the paper's choice). An integer N >= 1: at evaluation and serving the
    /// tower runs with its position feature (the feature of its groups that reads the
    /// `[columns] position` column) set to N for every row, and its logit is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve_position: Option<i64>,
}

fn default_position_hidden() -> Vec<usize> {
    vec![16]
}

fn default_feature_dropout() -> f64 {
    0.1
}

fn default_position_inputs() -> Vec<String> {
    vec!["bias".into()]
}

fn default_expert_dim() -> usize {
    128
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MlpSection {
    pub hidden: Vec<usize>,
    #[serde(default = "relu")]
    pub activation: ActivationName,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub layer_norm: bool,
}

fn relu() -> ActivationName {
    ActivationName::Relu
}

/// One `[[model.experts]]` entry. `kind` selects the variant, and each kind accepts only
/// its own keys: a key of another kind is an error naming the key and the kind.
///
/// Serialised internally tagged (`kind` first, then the variant's fields in order), which
/// is the text earlier versions wrote into checkpoint manifests. Deserialised by
/// [`ExpertSection::from_table`] (buffered, since `kind` may come after other keys).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExpertSection {
    Dcnv2(Dcnv2Expert),
    Masknet(MaskNetExpert),
    Finalmlp(FinalMlpExpert),
    Mlp(MlpExpert),
}

/// `kind = "dcnv2"`: a cross network and an MLP, stacked or in parallel.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Dcnv2Expert {
    #[serde(default = "one")]
    pub count: usize,
    /// The MLP's hidden sizes; empty = one layer of `expert_dim`.
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// The MLP's activation.
    #[serde(default = "relu")]
    pub activation: ActivationName,
    /// Dropout after each MLP layer.
    #[serde(default)]
    pub dropout: f64,
    /// Number of cross layers (default 3).
    pub cross_layers: Option<usize>,
    /// Rank of W = U·Vᵀ; absent for full rank.
    pub low_rank: Option<usize>,
    /// Cross net then MLP (`stacked`, the default) or beside it (`parallel`).
    pub structure: Option<Structure>,
}

/// `kind = "masknet"`: MaskBlocks one after another or side by side (FuxiCTR's
/// `SerialMaskNet` / `ParallelMaskNet`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaskNetExpert {
    #[serde(default = "one")]
    pub count: usize,
    /// `structure = "parallel"` only: an MLP over the concatenated block outputs
    /// (FuxiCTR's `ParallelMaskNet` `dnn_hidden_units`); empty = none.
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// After each block's output layer norm, and in the MLP.
    #[serde(default = "relu")]
    pub activation: ActivationName,
    /// After each block's output, and after each MLP layer.
    #[serde(default)]
    pub dropout: f64,
    /// `stacked` (default) or `parallel`.
    pub structure: Option<Structure>,
    /// Number of MaskBlocks (default 2).
    pub blocks: Option<usize>,
    /// Output width of each block (default `expert_dim`).
    pub block_dim: Option<usize>,
    /// Mask hidden width = reduction_ratio × input width (default 2).
    pub reduction_ratio: Option<f64>,
}

/// `kind = "finalmlp"`: two MLP streams behind feature-selection gates, fused by
/// multi-head bilinear fusion.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FinalMlpExpert {
    #[serde(default = "one")]
    pub count: usize,
    /// The first stream's hidden sizes (and the second's unless `stream2` is given).
    #[serde(default)]
    pub hidden: Vec<usize>,
    #[serde(default = "relu")]
    pub activation: ActivationName,
    #[serde(default)]
    pub dropout: f64,
    /// The second stream's hidden sizes.
    pub stream2: Option<Vec<usize>>,
    /// Heads of the bilinear fusion (default 1).
    pub heads: Option<usize>,
}

/// `kind = "mlp"`: a plain MLP.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MlpExpert {
    #[serde(default = "one")]
    pub count: usize,
    #[serde(default)]
    pub hidden: Vec<usize>,
    #[serde(default = "relu")]
    pub activation: ActivationName,
    #[serde(default)]
    pub dropout: f64,
}

/// Why a `[[model.experts]]` table is not an expert: the key inside the table (`kind`,
/// `cross_layers`, `hidden[1]`; empty for the table as a whole) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpertKeyError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ExpertKeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.key.as_str() {
            "" => f.write_str(&self.message),
            key => write!(f, "`{key}`: {}", self.message),
        }
    }
}

impl std::error::Error for ExpertKeyError {}

impl ExpertSection {
    pub fn kind(&self) -> ExpertKind {
        match self {
            ExpertSection::Dcnv2(_) => ExpertKind::Dcnv2,
            ExpertSection::Masknet(_) => ExpertKind::Masknet,
            ExpertSection::Finalmlp(_) => ExpertKind::Finalmlp,
            ExpertSection::Mlp(_) => ExpertKind::Mlp,
        }
    }

    /// How many experts this entry stands for.
    pub fn count(&self) -> usize {
        match self {
            ExpertSection::Dcnv2(x) => x.count,
            ExpertSection::Masknet(x) => x.count,
            ExpertSection::Finalmlp(x) => x.count,
            ExpertSection::Mlp(x) => x.count,
        }
    }

    /// The entry's `count`, to edit (e.g. one expert fewer).
    pub fn count_mut(&mut self) -> &mut usize {
        match self {
            ExpertSection::Dcnv2(x) => &mut x.count,
            ExpertSection::Masknet(x) => &mut x.count,
            ExpertSection::Finalmlp(x) => &mut x.count,
            ExpertSection::Mlp(x) => &mut x.count,
        }
    }

    /// The keys a `kind` accepts besides `kind` itself, read from its struct.
    pub fn keys(kind: ExpertKind) -> &'static [&'static str] {
        use super::keys::struct_fields;
        match kind {
            ExpertKind::Dcnv2 => struct_fields::<Dcnv2Expert>(),
            ExpertKind::Masknet => struct_fields::<MaskNetExpert>(),
            ExpertKind::Finalmlp => struct_fields::<FinalMlpExpert>(),
            ExpertKind::Mlp => struct_fields::<MlpExpert>(),
        }
    }

    /// `kind` and every key of any kind.
    fn all_keys() -> &'static [&'static str] {
        static ALL: OnceLock<Vec<&'static str>> = OnceLock::new();
        ALL.get_or_init(|| {
            let mut all = vec!["kind"];
            for k in ExpertKind::ALL {
                for key in Self::keys(k) {
                    if !all.contains(key) {
                        all.push(key);
                    }
                }
            }
            all
        })
    }

    /// Reads an expert from its table: `kind`, then that kind's keys only.
    pub fn from_table(mut t: toml::Table) -> Result<Self, ExpertKeyError> {
        let names = || ExpertKind::ALL.map(|k| format!("\"{k}\"")).join(", ");
        let kind = match t.remove("kind") {
            None => {
                return Err(ExpertKeyError {
                    key: String::new(),
                    message: format!("missing `kind` (one of {})", names()),
                })
            }
            Some(v) => ExpertKind::deserialize(v)
                .map_err(|e| ExpertKeyError { key: "kind".into(), message: e.message().trim().to_string() })?,
        };
        let own = Self::keys(kind);
        if let Some(key) = t.keys().find(|k| !own.contains(&k.as_str())) {
            let takes = format!("a {kind} expert takes `kind`, `{}`", own.join("`, `"));
            let owners: Vec<&str> = ExpertKind::ALL
                .into_iter()
                .filter(|&o| Self::keys(o).contains(&key.as_str()))
                .map(ExpertKind::name)
                .collect();
            let message = if owners.is_empty() {
                format!("unknown key for a {kind} expert ({takes})")
            } else {
                format!("does not apply to a {kind} expert (it is a key of {}; {takes})", owners.join(", "))
            };
            return Err(ExpertKeyError { key: key.clone(), message });
        }
        fn variant<T: DeserializeOwned>(t: toml::Table) -> Result<T, ExpertKeyError> {
            serde_path_to_error::deserialize(toml::Value::Table(t)).map_err(|e| {
                let key = e.path().to_string();
                ExpertKeyError {
                    key: if key == "." { String::new() } else { key },
                    message: e.into_inner().message().trim().to_string(),
                }
            })
        }
        Ok(match kind {
            ExpertKind::Dcnv2 => ExpertSection::Dcnv2(variant(t)?),
            ExpertKind::Masknet => ExpertSection::Masknet(variant(t)?),
            ExpertKind::Finalmlp => ExpertSection::Finalmlp(variant(t)?),
            ExpertKind::Mlp => ExpertSection::Mlp(variant(t)?),
        })
    }
}

impl<'de> Deserialize<'de> for ExpertSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Table;
        impl<'de> Visitor<'de> for Table {
            type Value = ExpertSection;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an expert table with a `kind`")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ExpertSection, A::Error> {
                let mut t = toml::Table::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<toml::Value>()?;
                    t.insert(key, value);
                }
                ExpertSection::from_table(t).map_err(de::Error::custom)
            }
        }
        // A struct request (rather than a map) names the keys, for `keys::accepted_keys`.
        d.deserialize_struct("ExpertSection", ExpertSection::all_keys(), Table)
    }
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GateSection {
    /// Softmax temperature (> 0).
    #[serde(default = "unit")]
    pub temperature: f64,
    /// Keep the k largest gate weights per example (renormalised); 0 keeps all.
    #[serde(default)]
    pub top_k: usize,
    /// Hidden layers of the gate before its linear map to expert logits (empty: the
    /// lightweight Linear + softmax gate). Not written when empty, so configs without
    /// it serialise as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden: Vec<usize>,
    /// Activation of the hidden layers (default relu; needs `hidden`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<ActivationName>,
    /// Gate dropout in training (YouTube, against polarisation): each (example, expert)
    /// gate weight is zeroed with this probability after the softmax and the row
    /// renormalised; a row never loses its last expert. In [0, 1); 0 (default) is off.
    /// Not written when 0, so configs without it serialise as before.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropout: f64,
    /// Surface-aware gating: feature groups (`[feature_groups]`) the gates read besides
    /// (or, with `expert_input = false`, instead of) the experts' input, e.g.
    /// `["surface"]` with the segment column's embedding. OMoE and MMoE only. Not
    /// written when empty, so configs without it serialise as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// Whether the gates also read the experts' input (the trunk) when `inputs` is set
    /// (default true). Not written when true.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub expert_input: bool,
}

fn is_true(v: &bool) -> bool {
    *v
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_zero_rows(v: &usize) -> bool {
    *v == 0
}

impl Default for GateSection {
    fn default() -> Self {
        GateSection {
            temperature: 1.0,
            top_k: 0,
            hidden: Vec::new(),
            activation: None,
            dropout: 0.0,
            inputs: Vec::new(),
            expert_input: true,
        }
    }
}

fn unit() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TowerSection {
    #[serde(default = "default_tower")]
    pub hidden: Vec<usize>,
    #[serde(default = "relu")]
    pub activation: ActivationName,
    /// Per-surface towers: each task gets one tower per `[columns] segment` value, and a
    /// row's logit is its surface's tower's (issue 12). Needs `[columns] segment` with at
    /// least two values; refused for a two-tower model's towers. Not written when false,
    /// so configs without it serialise as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_surface: bool,
}

impl Default for TowerSection {
    fn default() -> Self {
        TowerSection { hidden: default_tower(), activation: ActivationName::Relu, per_surface: false }
    }
}

fn default_tower() -> Vec<usize> {
    vec![64]
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PleSection {
    pub levels: usize,
    /// Shared experts per level (each from `experts`, cycling through the list).
    pub shared_experts: usize,
    /// Task-specific experts per task per level.
    pub task_experts: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenseOptimizer {
    Adam,
    Adamw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SparseOptimizer {
    RowwiseAdagrad,
    LazyAdam,
}

/// `[train] precision`: the arithmetic of training's matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainPrecision {
    /// f32 throughout.
    #[default]
    F32,
    /// Mixed precision: every matrix product (forward and backward) with bf16 operands
    /// and f32 accumulation; weights, gradients and optimizer state in f32.
    Bf16,
}

impl TrainPrecision {
    pub fn is_f32(&self) -> bool {
        *self == TrainPrecision::F32
    }
}

/// `[train] embedding_sharding`: where a data-parallel job keeps its embedding tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingSharding {
    /// Every rank holds every row (and the sparse optimizer's state for it); the ranks'
    /// sparse gradients are all-gathered.
    #[default]
    Replicated,
    /// Rank `r` of `N` holds the rows `id ≡ r (mod N)` and their optimizer state; each
    /// step looks its batch's rows up and sends their gradients to their owners by
    /// all-to-all (docs/distributed.md).
    Rows,
}

impl EmbeddingSharding {
    pub fn is_replicated(&self) -> bool {
        *self == EmbeddingSharding::Replicated
    }
}

/// `[train] sparse_weight_decay_scope`: the embedding rows the L2 penalty applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SparseDecayScope {
    /// The rows a batch looked up (their gradient gets `λ·w`).
    #[default]
    Touched,
    /// Every row of every table, every step: the gradient of `λ/2·‖W‖²` over the table.
    Table,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LrDecay {
    None,
    Linear,
    Cosine,
}

/// A validation metric early stopping can watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorMetric {
    /// Binary tasks; higher is better.
    Auc,
    /// Binary tasks with a request id (group AUC); higher is better.
    Gauc,
    /// Binary tasks; lower is better.
    Logloss,
    /// Binary tasks (normalised entropy); lower is better.
    Ne,
    /// Regression tasks; lower is better.
    Rmse,
    /// Regression tasks; lower is better.
    Mae,
}

impl MonitorMetric {
    /// Whether the metric is defined for binary tasks (else for regression tasks).
    pub fn for_binary(self) -> bool {
        matches!(self, MonitorMetric::Auc | MonitorMetric::Gauc | MonitorMetric::Logloss | MonitorMetric::Ne)
    }

    /// Whether a larger value is better.
    pub fn higher_is_better(self) -> bool {
        matches!(self, MonitorMetric::Auc | MonitorMetric::Gauc)
    }

    pub fn name(self) -> &'static str {
        match self {
            MonitorMetric::Auc => "auc",
            MonitorMetric::Gauc => "gauc",
            MonitorMetric::Logloss => "logloss",
            MonitorMetric::Ne => "ne",
            MonitorMetric::Rmse => "rmse",
            MonitorMetric::Mae => "mae",
        }
    }
}

/// What early stopping watches, resolved against the tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct Monitor {
    /// Task indices averaged (one for a named task or the first task).
    pub tasks: Vec<usize>,
    pub metric: MonitorMetric,
    /// `click auc`, `mean auc (click, save)`.
    pub label: String,
}

/// Resolves `early_stopping_task` / `early_stopping_metric` over the tasks (name, binary?);
/// `Err((key, message))` names the key.
pub fn resolve_monitor(t: &TrainSection, tasks: &[(&str, bool)]) -> Result<Monitor, (String, String)> {
    let key = |k: &str| format!("train.{k}");
    let default_metric = |binary: bool| if binary { MonitorMetric::Auc } else { MonitorMetric::Rmse };
    let fits = |m: MonitorMetric, binary: bool| m.for_binary() == binary;
    let (tasks, metric, label) = match t.early_stopping_task.as_deref() {
        Some("mean") => {
            let metric = t.early_stopping_metric.unwrap_or_else(|| default_metric(tasks.iter().any(|t| t.1)));
            let picked: Vec<usize> = (0..tasks.len()).filter(|&i| fits(metric, tasks[i].1)).collect();
            if picked.is_empty() {
                return Err((
                    key("early_stopping_metric"),
                    format!("`{}` applies to no task of this config", metric.name()),
                ));
            }
            let names: Vec<&str> = picked.iter().map(|&i| tasks[i].0).collect();
            let label = format!("mean {} ({})", metric.name(), names.join(", "));
            (picked, metric, label)
        }
        named => {
            let i = match named {
                None => 0,
                Some(n) => tasks.iter().position(|t| t.0 == n).ok_or_else(|| {
                    let all: Vec<&str> = tasks.iter().map(|t| t.0).collect();
                    (
                        key("early_stopping_task"),
                        format!("no task `{n}`; expected \"mean\" or one of: {}", all.join(", ")),
                    )
                })?,
            };
            let Some(&(name, binary)) = tasks.get(i) else {
                return Err((key("early_stopping_task"), "the config has no tasks".into()));
            };
            let metric = t.early_stopping_metric.unwrap_or(default_metric(binary));
            if !fits(metric, binary) {
                return Err((
                    key("early_stopping_metric"),
                    format!(
                        "`{}` does not apply to the {} task `{name}`",
                        metric.name(),
                        if binary { "binary" } else { "regression" }
                    ),
                ));
            }
            (vec![i], metric, format!("{name} {}", metric.name()))
        }
    };
    Ok(Monitor { tasks, metric, label })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LossWeighting {
    /// The tasks' `weight`s.
    Fixed,
    /// Learned homoscedastic uncertainty (Kendall et al., 2018).
    Uncertainty,
}

/// `[train]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    #[serde(default = "one")]
    pub epochs: usize,
    /// Stop after this many steps (overrides epochs when reached first).
    pub max_steps: Option<u64>,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_optimizer")]
    pub optimizer: DenseOptimizer,
    #[serde(default)]
    pub weight_decay: f64,
    /// Clip the dense gradients to this global L2 norm (all dense parameters together,
    /// before the optimizer step); absent or 0 = no clipping.
    pub grad_clip: Option<f64>,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "default_decay")]
    pub decay: LrDecay,
    #[serde(default = "default_sparse_optimizer")]
    pub sparse_optimizer: SparseOptimizer,
    #[serde(default = "default_sparse_lr")]
    pub sparse_lr: f64,
    /// L2 penalty on embedding rows (added to their gradient): on the rows each batch
    /// touches, or on every row of every table (`sparse_weight_decay_scope`).
    #[serde(default)]
    pub sparse_weight_decay: f64,
    /// Which rows `sparse_weight_decay` applies to: `touched` (the default) or `table`
    /// (every row each step, at the cost of a pass over every table). Needs
    /// `sparse_weight_decay > 0`. Not written when absent, so configs without it
    /// serialise as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse_weight_decay_scope: Option<SparseDecayScope>,
    /// Data-parallel training: the embedding tables replicated on every rank, or
    /// sharded across the ranks by rows. One process holds every row either way. Not
    /// written when replicated, so configs without it serialise as before.
    #[serde(default, skip_serializing_if = "EmbeddingSharding::is_replicated")]
    pub embedding_sharding: EmbeddingSharding,
    /// With `embedding_sharding = "rows"`: tables (by name: a feature's own table is
    /// named after the feature, a shared one after its `[tables]` entry) kept whole on
    /// every rank instead, their gradients all-gathered — small tables, where a lookup
    /// round trip costs more than the memory saved. Refused with replicated tables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicated_tables: Vec<String>,
    /// With `embedding_sharding = "rows"`: tables with fewer rows than this are kept
    /// whole on every rank too (0: none). Refused with replicated tables.
    #[serde(default, skip_serializing_if = "is_zero_rows")]
    pub replicate_tables_under_rows: usize,
    /// Data-parallel training: all-reduce the head's dense gradients on a communication
    /// thread while the rest of backward (the embeddings' scatter) runs, instead of after
    /// backward. The same bits either way; off by default: where the ranks keep every
    /// core busy the thread only competes with them (docs/distributed.md). Not written
    /// when off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overlap_all_reduce: bool,
    /// Mixed-precision training: `bf16` runs every matrix product with bf16 operands
    /// (f32 accumulation, f32 master weights). Not written when f32, so configs without it
    /// serialise as before.
    #[serde(default, skip_serializing_if = "TrainPrecision::is_f32")]
    pub precision: TrainPrecision,
    #[serde(default = "default_loss_weighting")]
    pub loss_weighting: LossWeighting,
    /// Validate every N steps (0 = once per epoch).
    #[serde(default)]
    pub eval_every_steps: u64,
    /// Stop after this many validations without improvement (0 = never).
    #[serde(default)]
    pub early_stopping_patience: u32,
    /// Which task early stopping (and reduce on plateau) watches: a task's name, or
    /// `"mean"` for the mean over the tasks the metric applies to; absent = the first task.
    pub early_stopping_task: Option<String>,
    /// Which validation metric it watches; absent = AUC for a binary task, RMSE for a
    /// regression task (for `"mean"`: AUC over the binary tasks, else RMSE).
    pub early_stopping_metric: Option<MonitorMetric>,
    /// Reduce on plateau: every validation that does not improve the monitored metric
    /// (the one early stopping watches) multiplies the dense and sparse learning rates
    /// by this factor, as FuxiCTR's `reduce_lr_on_plateau` (0.1) does. 1 = off (the
    /// default); needs `early_stopping_patience > 0`.
    #[serde(default = "one_f64")]
    pub lr_plateau_factor: f64,
    /// Write a periodic checkpoint (`RUN_DIR/checkpoints/step-<N>/`) every N steps
    /// (0 = no step-based checkpoints). The final model always goes to `RUN_DIR/checkpoint/`.
    #[serde(default)]
    pub checkpoint_every_steps: u64,
    /// Also write a periodic checkpoint when this many minutes have passed since the
    /// last one (0 = no time-based checkpoints).
    #[serde(default)]
    pub checkpoint_every_minutes: f64,
    /// Periodic checkpoints kept; older ones are deleted (at least 1).
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Compute threads (0 = one per core).
    #[serde(default)]
    pub threads: usize,
}

fn one_f64() -> f64 {
    1.0
}
fn default_lr() -> f64 {
    1e-3
}
fn default_optimizer() -> DenseOptimizer {
    DenseOptimizer::Adam
}
fn default_decay() -> LrDecay {
    LrDecay::None
}
fn default_sparse_optimizer() -> SparseOptimizer {
    SparseOptimizer::RowwiseAdagrad
}
fn default_sparse_lr() -> f64 {
    0.05
}
fn default_loss_weighting() -> LossWeighting {
    LossWeighting::Fixed
}
fn default_seed() -> u64 {
    1
}
fn default_keep_checkpoints() -> usize {
    3
}

impl TrainSection {
    /// The global-norm clip in force: `None` when `grad_clip` is absent or 0.
    pub fn clip_norm(&self) -> Option<f64> {
        self.grad_clip.filter(|&c| c > 0.0)
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        toml::from_str("").expect("every [train] key has a default")
    }
}

/// Validates `[model]` against the tasks; `Err((key, message))`.
pub fn validate_model(m: &ModelSection, n_tasks: usize) -> Result<(), (String, String)> {
    let e = |k: &str, msg: String| Err((format!("model.{k}"), msg));
    match (m.architecture, &m.two_tower) {
        (Architecture::TwoTower, None) => {
            return e(
                "two_tower",
                "required for architecture = \"two_tower\" (its dim and its user and item towers)".into(),
            )
        }
        (Architecture::TwoTower, Some(tt)) => return validate_two_tower(m, tt, n_tasks),
        (_, Some(_)) => return e("two_tower", "only for architecture = \"two_tower\"".into()),
        (_, None) => {}
    }
    if m.expert_dim == 0 {
        return e("expert_dim", "expected a positive integer".into());
    }
    if m.experts.is_empty() {
        return e("experts", "expected at least one [[model.experts]] entry".into());
    }
    let total: usize = m.experts.iter().map(ExpertSection::count).sum();
    match m.architecture {
        Architecture::SingleTask if n_tasks != 1 => {
            return e("architecture", format!("single_task needs exactly one task, the config has {n_tasks}"))
        }
        Architecture::SingleTask | Architecture::SharedBottom if total != 1 => {
            return e("experts", format!("{:?} takes exactly one expert (the bottom), found {total}", m.architecture))
        }
        Architecture::Ple if m.ple.is_none() => return e("ple", "required for architecture = \"ple\"".into()),
        _ => {}
    }
    if m.architecture != Architecture::Ple && m.ple.is_some() {
        return e("ple", "only for architecture = \"ple\"".into());
    }
    if let Some(p) = &m.ple {
        if p.levels == 0 || p.shared_experts + p.task_experts == 0 {
            return e("ple", "expected levels >= 1 and at least one shared or task expert".into());
        }
    }
    if !(m.gate.temperature.is_finite() && m.gate.temperature > 0.0) {
        return e("gate.temperature", format!("expected a number > 0, found {}", m.gate.temperature));
    }
    if m.gate.hidden.contains(&0) {
        return e("gate.hidden", "expected positive sizes".into());
    }
    if m.gate.activation.is_some() && m.gate.hidden.is_empty() {
        return e("gate.activation", "needs gate.hidden (the lightweight gate has no hidden layer)".into());
    }
    if m.gate.top_k > total {
        return e("gate.top_k", format!("top_k = {} exceeds the {total} experts", m.gate.top_k));
    }
    if !(0.0..1.0).contains(&m.gate.dropout) {
        return e("gate.dropout", format!("expected 0 <= dropout < 1, found {}", m.gate.dropout));
    }
    if m.gate.dropout > 0.0 && matches!(m.architecture, Architecture::SingleTask | Architecture::SharedBottom) {
        return e(
            "gate.dropout",
            format!("{:?} has no gate to drop experts from (use omoe, mmoe or ple)", m.architecture),
        );
    }
    if !m.gate.inputs.is_empty() && !matches!(m.architecture, Architecture::Omoe | Architecture::Mmoe) {
        return e(
            "gate.inputs",
            format!(
                "{:?}: surface-aware gating is built for omoe and mmoe only ({})",
                m.architecture,
                match m.architecture {
                    Architecture::SingleTask | Architecture::SharedBottom => "this architecture has no gate",
                    _ => "not yet for this architecture's gates",
                }
            ),
        );
    }
    if !m.gate.expert_input && m.gate.inputs.is_empty() {
        return e("gate.expert_input", "false needs gate.inputs (the gates would read nothing)".into());
    }
    let mlp = |key: &str, s: &MlpSection| -> Result<(), (String, String)> {
        if s.hidden.is_empty() || s.hidden.contains(&0) {
            return Err((format!("model.{key}.hidden"), "expected non-empty positive sizes".into()));
        }
        if !(0.0..1.0).contains(&s.dropout) {
            return Err((format!("model.{key}.dropout"), format!("expected 0 <= dropout < 1, found {}", s.dropout)));
        }
        Ok(())
    };
    if let Some(s) = &m.shared {
        mlp("shared", s)?;
    }
    if let Some(p) = &m.position_tower {
        if p.hidden.contains(&0) {
            return e("position_tower.hidden", "expected positive sizes (empty: a linear tower)".into());
        }
        if !(0.0..1.0).contains(&p.dropout) {
            return e("position_tower.dropout", format!("expected 0 <= dropout < 1, found {}", p.dropout));
        }
        if let Some(n) = p.serve_position {
            if !(1..=i64::from(u32::MAX)).contains(&n) {
                return e(
                    "position_tower.serve_position",
                    format!(
                        "expected a position >= 1 (1 = the top slot), found {n}; without the key the tower \
                         is off at evaluation and serving"
                    ),
                );
            }
        }
    }
    if m.tower.hidden.contains(&0) {
        return e("tower.hidden", "expected positive sizes".into());
    }
    for (key, init) in [("init", m.init), ("embedding_init", m.embedding_init)] {
        let (name, v) = match init {
            Some(InitSection::Normal { std }) => ("normal.std", std),
            Some(InitSection::Uniform { a }) => ("uniform.a", a),
            _ => continue,
        };
        if !(v.is_finite() && v > 0.0 && v <= f32::MAX as f64) {
            return e(&format!("{key}.{name}"), format!("expected a finite number > 0, found {v}"));
        }
    }
    for (i, x) in m.experts.iter().enumerate() {
        let fail = |f: &str, msg: &str| Err((format!("model.experts[{i}].{f}"), msg.to_string()));
        // The keys every kind has.
        let (count, hidden, dropout) = match x {
            ExpertSection::Dcnv2(d) => (d.count, &d.hidden, d.dropout),
            ExpertSection::Masknet(d) => (d.count, &d.hidden, d.dropout),
            ExpertSection::Finalmlp(d) => (d.count, &d.hidden, d.dropout),
            ExpertSection::Mlp(d) => (d.count, &d.hidden, d.dropout),
        };
        if count == 0 {
            return fail("count", "expected a positive integer");
        }
        if hidden.contains(&0) {
            return fail("hidden", "expected positive sizes");
        }
        if !(0.0..1.0).contains(&dropout) {
            return fail("dropout", "expected 0 <= dropout < 1");
        }
        match x {
            ExpertSection::Dcnv2(d) if d.cross_layers == Some(0) => return fail("cross_layers", "expected >= 1"),
            ExpertSection::Dcnv2(d) if d.low_rank == Some(0) => {
                return fail("low_rank", "expected >= 1 (omit for full rank)")
            }
            ExpertSection::Masknet(d) if d.blocks == Some(0) => return fail("blocks", "expected >= 1"),
            ExpertSection::Masknet(d) if d.block_dim == Some(0) => return fail("block_dim", "expected >= 1"),
            ExpertSection::Masknet(d) if d.reduction_ratio.is_some_and(|r| !(r.is_finite() && r > 0.0)) => {
                return fail("reduction_ratio", "expected a number > 0")
            }
            ExpertSection::Masknet(d) if !d.hidden.is_empty() && d.structure != Some(Structure::Parallel) => {
                return fail(
                    "hidden",
                    "a masknet expert's MLP follows parallel blocks only (structure = \"parallel\"); \
                     stacked blocks are sized by blocks and block_dim",
                )
            }
            ExpertSection::Finalmlp(d) if d.heads == Some(0) => return fail("heads", "expected >= 1"),
            ExpertSection::Finalmlp(d) if d.stream2.as_ref().is_some_and(|s| s.contains(&0)) => {
                return fail("stream2", "expected positive sizes")
            }
            ExpertSection::Mlp(_) | ExpertSection::Finalmlp(_) if hidden.is_empty() => {
                return fail("hidden", "expected at least one hidden size")
            }
            _ => {}
        }
    }
    Ok(())
}

/// Validates `[model.tower] per_surface` against `[columns] segment` (`surfaces`: its
/// number of values, `None` without the column): per-surface towers need a segment
/// column with at least two values (with one, the towers are the shared ones under
/// other names). A two-tower model's towers refuse the key in [`validate_model`].
pub fn validate_per_surface(m: &ModelSection, surfaces: Option<usize>) -> Result<(), (String, String)> {
    if !m.tower.per_surface {
        return Ok(());
    }
    match surfaces {
        None => Err((
            "model.tower.per_surface".into(),
            "needs [columns] segment = { column, values }: a tower per surface is chosen by each row's \
             segment value"
                .into(),
        )),
        Some(n) if n < 2 => Err((
            "model.tower.per_surface".into(),
            format!(
                "needs at least two [columns] segment values, found {n}: with one surface the towers are the \
                 shared ones (remove the key)"
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// Validates a two-tower `[model]`: nothing of a head at the top (each tower has its
/// own), a positive `dim`, and each tower a valid head of another architecture.
fn validate_two_tower(m: &ModelSection, tt: &TwoTowerSection, n_tasks: usize) -> Result<(), (String, String)> {
    let e = |k: &str, msg: String| Err((format!("model.{k}"), msg));
    let at_top = |k: &str| {
        e(
            k,
            format!(
                "a two-tower model has no head at the top of [model]: set `{k}` inside \
                 [model.two_tower.user] or [model.two_tower.item]"
            ),
        )
    };
    if !m.experts.is_empty() {
        return at_top("experts");
    }
    if let Some(k) = m.given_head_keys().first() {
        return at_top(k);
    }
    for (k, given) in [("shared", m.shared.is_some()), ("ple", m.ple.is_some()), ("inputs", m.inputs.is_some())] {
        if given {
            return at_top(k);
        }
    }
    if m.position_tower.is_some() {
        return e(
            "position_tower",
            "not yet for a two-tower model (its logit would have to join the dot product of the towers)".into(),
        );
    }
    if tt.dim == 0 {
        return e("two_tower.dim", "expected a positive integer".into());
    }
    match (tt.score, tt.temperature) {
        (ScoreKind::Dot, Some(_)) => {
            return e("two_tower.temperature", "only a cosine score has a temperature (set score = \"cosine\")".into())
        }
        (ScoreKind::Cosine, None) => {
            return e("two_tower.temperature", "a cosine score needs a temperature > 0 (e.g. 0.1)".into())
        }
        (ScoreKind::Cosine, Some(t)) if !(t.is_finite() && t > 0.0) => {
            return e("two_tower.temperature", format!("expected a number > 0, found {t}"))
        }
        _ => {}
    }
    if let Some(ib) = &tt.in_batch {
        if !(ib.temperature.is_finite() && ib.temperature > 0.0) {
            return e("two_tower.in_batch.temperature", format!("expected a number > 0, found {}", ib.temperature));
        }
        if !(ib.weight.is_finite() && ib.weight >= 0.0) {
            return e("two_tower.in_batch.weight", format!("expected a number >= 0, found {}", ib.weight));
        }
    }
    for (side, t) in [("user", &tt.user), ("item", &tt.item)] {
        if t.architecture == Architecture::TwoTower {
            return e(
                &format!("two_tower.{side}.architecture"),
                "a tower is a head: any architecture but two_tower".into(),
            );
        }
        if !t.gate.inputs.is_empty() || !t.gate.expert_input {
            return e(
                &format!("two_tower.{side}.gate.inputs"),
                "surface-aware gating is not built for a two-tower model's towers".into(),
            );
        }
        if t.tower.per_surface {
            return e(
                &format!("two_tower.{side}.tower.per_surface"),
                "per-surface towers are refused for a two-tower model: its towers end in embeddings scored \
                 by their dot product, the item tower's embeddings are cached per item and must not depend \
                 on the request's surface, and the user tower runs once per request"
                    .into(),
            );
        }
        validate_model(&t.head(), n_tasks)
            .map_err(|(k, msg)| (k.replacen("model.", &format!("model.two_tower.{side}."), 1), msg))?;
    }
    Ok(())
}

/// Validates `[train]`; `Err((key, message))`.
pub fn validate_train(t: &TrainSection) -> Result<(), (String, String)> {
    let e = |k: &str, msg: String| Err((format!("train.{k}"), msg));
    if t.epochs == 0 && t.max_steps.is_none() {
        return e("epochs", "expected >= 1 (or give max_steps)".into());
    }
    for (k, v) in [("lr", t.lr), ("sparse_lr", t.sparse_lr)] {
        if !(v.is_finite() && v > 0.0) {
            return e(k, format!("expected a number > 0, found {v}"));
        }
    }
    for (k, v) in [("weight_decay", t.weight_decay), ("sparse_weight_decay", t.sparse_weight_decay)] {
        if !(v.is_finite() && v >= 0.0) {
            return e(k, format!("expected a number >= 0, found {v}"));
        }
    }
    if t.embedding_sharding.is_replicated() {
        if !t.replicated_tables.is_empty() {
            return e(
                "replicated_tables",
                "needs embedding_sharding = \"rows\" (every table is replicated already)".into(),
            );
        }
        if t.replicate_tables_under_rows > 0 {
            return e(
                "replicate_tables_under_rows",
                "needs embedding_sharding = \"rows\" (every table is replicated already)".into(),
            );
        }
    }
    if t.sparse_weight_decay_scope.is_some() && t.sparse_weight_decay == 0.0 {
        return e(
            "sparse_weight_decay_scope",
            "needs sparse_weight_decay > 0 (the scope says which rows that L2 penalty applies to)".into(),
        );
    }
    if t.grad_clip.is_some_and(|c| !(c.is_finite() && c >= 0.0)) {
        return e("grad_clip", "expected a number >= 0 (0 = no clipping)".into());
    }
    if !(t.checkpoint_every_minutes.is_finite() && t.checkpoint_every_minutes >= 0.0) {
        return e("checkpoint_every_minutes", format!("expected a number >= 0, found {}", t.checkpoint_every_minutes));
    }
    if t.keep_checkpoints == 0 {
        return e("keep_checkpoints", "expected >= 1".into());
    }
    if t.early_stopping_patience == 0 {
        for (k, given) in [
            ("early_stopping_task", t.early_stopping_task.is_some()),
            ("early_stopping_metric", t.early_stopping_metric.is_some()),
        ] {
            if given {
                return e(k, "needs early_stopping_patience > 0 (early stopping is off)".into());
            }
        }
    }
    let f = t.lr_plateau_factor;
    if !(f.is_finite() && f > 0.0 && f <= 1.0) {
        return e("lr_plateau_factor", format!("expected a number in (0, 1], found {f}"));
    }
    if f < 1.0 && t.early_stopping_patience == 0 {
        return e(
            "lr_plateau_factor",
            "needs early_stopping_patience > 0 (it reduces on the validations early stopping monitors)".into(),
        );
    }
    Ok(())
}
