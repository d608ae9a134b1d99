//! `[feature_groups]` and the inputs of the model's parts.
//!
//! A feature group is a name for a list of features (categorical or dense, by their
//! config name); a feature may sit in several groups. A part of the model reads a list
//! of groups, concatenated in that order: the head (`[model] inputs`) and the position
//! tower (`[model.position_tower] inputs`, default `["bias"]`).
//!
//! Column layout of an input: group by group, each group's features in the order the
//! group lists them (an embedding's `dim` columns, a dense feature's value), then the
//! missing-indicator columns of the group's dense features, in the same order. A group
//! that lists every feature in config order is therefore exactly the batch's
//! `[embeddings | dense values | missing indicators]`.
//!
//! Without `[model] inputs` the head reads every feature in config order, less the
//! features that only groups read by the position tower hold: with no position tower
//! (or no groups) that is every feature, today's layout exactly.

use super::model::{ModelSection, TwoTowerSection};
use super::{CategoricalFeature, DenseFeature, TaskSpec};
use std::collections::{BTreeMap, HashMap};

/// A feature by its place in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FeatureRef {
    /// Index into `ExperimentConfig::categorical`.
    Categorical(usize),
    /// Index into `ExperimentConfig::dense`.
    Dense(usize),
}

/// A named list of features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureGroup {
    pub name: String,
    /// In the order the group lists them.
    pub features: Vec<FeatureRef>,
}

/// Where a block of an input's columns comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockSource {
    /// The embedding of categorical feature `i` (its table's `dim` columns).
    Embedding(usize),
    /// The value of dense feature `i` (one column).
    DenseValue(usize),
    /// The missing indicator of dense feature `i` (one column).
    MissingIndicator(usize),
}

/// One block of an input's columns, in layout order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputBlock {
    /// Index of the group (in [`InputSpec::groups`]) the block belongs to.
    pub group: usize,
    /// Index of the feature in the input's feature list ([`InputSpec::features`]): a
    /// dense feature's value and indicator share it (feature dropout drops both).
    pub slot: usize,
    pub source: BlockSource,
}

/// What one part of the model reads: groups, concatenated in order. No feature
/// appears twice (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    pub groups: Vec<FeatureGroup>,
}

impl InputSpec {
    /// Every feature read, in layout order.
    pub fn features(&self) -> Vec<FeatureRef> {
        self.groups.iter().flat_map(|g| g.features.iter().copied()).collect()
    }

    /// The column blocks in layout order (see the module docs); `dense` tells which
    /// dense features have a missing indicator.
    pub fn blocks(&self, dense: &[DenseFeature]) -> Vec<InputBlock> {
        let mut out = Vec::new();
        let mut slot = 0;
        for (group, g) in self.groups.iter().enumerate() {
            let first = slot;
            for &f in &g.features {
                let source = match f {
                    FeatureRef::Categorical(i) => BlockSource::Embedding(i),
                    FeatureRef::Dense(i) => BlockSource::DenseValue(i),
                };
                out.push(InputBlock { group, slot, source });
                slot += 1;
            }
            for (k, &f) in g.features.iter().enumerate() {
                if let FeatureRef::Dense(i) = f {
                    if dense[i].missing_indicator {
                        out.push(InputBlock { group, slot: first + k, source: BlockSource::MissingIndicator(i) });
                    }
                }
            }
        }
        out
    }
}

/// The position tower's resolved inputs and tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionTowerInputs {
    pub input: InputSpec,
    /// Per task: whether the tower's logit is added to it.
    pub tasks: Vec<bool>,
    /// `serve_position`, resolved: the tower also runs at evaluation and serving, with
    /// its position features set to a fixed position.
    pub serve_position: Option<ServePosition>,
}

/// `[model.position_tower] serve_position = N`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServePosition {
    /// N (>= 1).
    pub position: u32,
    /// The tower's position features: its single-valued categorical features that read
    /// the `[columns] position` column (indices into `ExperimentConfig::categorical`);
    /// none of them feeds the head.
    pub features: Vec<usize>,
}

/// What each part of the model reads, resolved against the features and tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInputs {
    /// The head's input; for a two-tower model, the user tower's groups then the item
    /// tower's (every feature the model reads).
    pub head: InputSpec,
    pub position_tower: Option<PositionTowerInputs>,
    /// `architecture = "two_tower"`: what each tower reads.
    pub two_tower: Option<TwoTowerInputs>,
    /// `[model.gate] inputs`: what the gates read besides (or instead of) the experts'
    /// input (surface-aware gating).
    pub gate: Option<InputSpec>,
}

/// The towers' inputs of a two-tower model: no feature in both, none reading the
/// position column, and no group named `bias` in the item tower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwoTowerInputs {
    pub user: InputSpec,
    pub item: InputSpec,
}

/// The name the head's input carries when `[model] inputs` is absent.
pub const DEFAULT_GROUP: &str = "default";

/// Every feature in config order: categorical, then dense.
pub fn all_features(n_categorical: usize, n_dense: usize) -> Vec<FeatureRef> {
    (0..n_categorical).map(FeatureRef::Categorical).chain((0..n_dense).map(FeatureRef::Dense)).collect()
}

type KeyError = (String, String);

/// Validates `[feature_groups]`: non-empty names and lists, known features, no feature
/// twice in a group. Groups come out in name order.
pub(crate) fn validate_groups(
    groups: &BTreeMap<String, Vec<String>>,
    categorical: &[CategoricalFeature],
    dense: &[DenseFeature],
) -> Result<Vec<FeatureGroup>, KeyError> {
    let by_name: HashMap<&str, FeatureRef> = categorical
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.as_str(), FeatureRef::Categorical(i)))
        .chain(dense.iter().enumerate().map(|(i, f)| (f.name.as_str(), FeatureRef::Dense(i))))
        .collect();
    let mut out = Vec::new();
    for (name, list) in groups {
        let key = format!("feature_groups.{name}");
        if name.is_empty() {
            return Err(("feature_groups".into(), "a group needs a non-empty name".into()));
        }
        if list.is_empty() {
            return Err((key, format!("group `{name}` is empty: expected at least one feature")));
        }
        let mut features = Vec::new();
        for f in list {
            let r = *by_name.get(f.as_str()).ok_or_else(|| {
                let have: Vec<&str> =
                    categorical.iter().map(|c| c.name.as_str()).chain(dense.iter().map(|d| d.name.as_str())).collect();
                (key.clone(), format!("group `{name}`: no feature `{f}` (features: {})", have.join(", ")))
            })?;
            if features.contains(&r) {
                return Err((key, format!("group `{name}`: feature `{f}` is listed twice")));
            }
            features.push(r);
        }
        out.push(FeatureGroup { name: name.clone(), features });
    }
    Ok(out)
}

/// Resolves a list of group names (at `key`) into an input: known groups, none twice,
/// and no feature read twice.
fn resolve_input(
    key: &str,
    names: &[String],
    groups: &[FeatureGroup],
    feature_name: &dyn Fn(FeatureRef) -> String,
) -> Result<InputSpec, KeyError> {
    let err = |m: String| (key.to_string(), m);
    if names.is_empty() {
        return Err(err("expected at least one feature group".into()));
    }
    let mut picked: Vec<FeatureGroup> = Vec::new();
    let mut owner: HashMap<FeatureRef, &str> = HashMap::new();
    for n in names {
        let g = groups.iter().find(|g| &g.name == n).ok_or_else(|| {
            if groups.is_empty() {
                err(format!("no feature group `{n}`: the config defines none (add a [feature_groups] table)"))
            } else {
                let have: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
                err(format!("no feature group `{n}` (groups: {})", have.join(", ")))
            }
        })?;
        if picked.iter().any(|p| &p.name == n) {
            return Err(err(format!("group `{n}` is listed twice")));
        }
        for &f in &g.features {
            if let Some(other) = owner.insert(f, &g.name) {
                return Err(err(format!(
                    "feature `{}` is in both `{other}` and `{n}`: it would be read twice",
                    feature_name(f)
                )));
            }
        }
        picked.push(g.clone());
    }
    Ok(InputSpec { groups: picked })
}

/// Resolves what the head and the position tower read, and the tower's tasks.
pub(crate) fn resolve_inputs(
    m: &ModelSection,
    groups: &[FeatureGroup],
    categorical: &[CategoricalFeature],
    dense: &[DenseFeature],
    tasks: &[TaskSpec],
    position_column: Option<&str>,
) -> Result<ModelInputs, KeyError> {
    let name = |f: FeatureRef| match f {
        FeatureRef::Categorical(i) => categorical[i].name.clone(),
        FeatureRef::Dense(i) => dense[i].name.clone(),
    };
    let position_tower = match &m.position_tower {
        None => None,
        Some(p) => {
            let key = "model.position_tower.inputs";
            if p.inputs.len() == 1 && p.inputs[0] == "bias" && !groups.iter().any(|g| g.name == "bias") {
                return Err((
                    key.into(),
                    "the position tower reads the feature group `bias` by default, and the config defines \
                     none: add `[feature_groups] bias = [...]` with the position (and device) features, or \
                     name the groups to read in `inputs`"
                        .into(),
                ));
            }
            let input = resolve_input(key, &p.inputs, groups, &name)?;
            let mask = match &p.tasks {
                None => vec![true; tasks.len()],
                Some(names) => {
                    let key = "model.position_tower.tasks";
                    if names.is_empty() {
                        return Err((key.into(), "expected at least one task (absent = every task)".into()));
                    }
                    let mut mask = vec![false; tasks.len()];
                    for n in names {
                        let t = tasks.iter().position(|t| &t.name == n).ok_or_else(|| {
                            let have: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
                            (key.to_string(), format!("no task `{n}` (tasks: {})", have.join(", ")))
                        })?;
                        if mask[t] {
                            return Err((key.into(), format!("task `{n}` is listed twice")));
                        }
                        mask[t] = true;
                    }
                    mask
                }
            };
            let serve_position = match p.serve_position {
                None => None,
                Some(n) => Some(serve_position(n, &input, categorical, dense, position_column, &name)?),
            };
            Some(PositionTowerInputs { input, tasks: mask, serve_position })
        }
    };
    let two_tower = match &m.two_tower {
        None => None,
        Some(tt) => Some(two_tower_inputs(tt, groups, categorical, dense, position_column, &name)?),
    };
    let head = match (&m.inputs, &two_tower) {
        (_, Some(tt)) => InputSpec { groups: tt.user.groups.iter().chain(&tt.item.groups).cloned().collect() },
        (Some(names), None) => resolve_input("model.inputs", names, groups, &name)?,
        (None, None) => {
            // Every feature, less those only the tower's groups hold.
            let tower_groups: Vec<&str> =
                m.position_tower.iter().flat_map(|p| p.inputs.iter().map(String::as_str)).collect();
            let tower_only = |f: &FeatureRef| {
                let holders: Vec<&FeatureGroup> = groups.iter().filter(|g| g.features.contains(f)).collect();
                !holders.is_empty() && holders.iter().all(|g| tower_groups.contains(&g.name.as_str()))
            };
            let features: Vec<FeatureRef> =
                all_features(categorical.len(), dense.len()).into_iter().filter(|f| !tower_only(f)).collect();
            if features.is_empty() {
                return Err((
                    "model.inputs".into(),
                    "the head would read no feature: every feature is only in groups the position tower \
                     reads; list the head's groups in `inputs`"
                        .into(),
                ));
            }
            InputSpec { groups: vec![FeatureGroup { name: DEFAULT_GROUP.into(), features }] }
        }
    };
    // Every feature feeds some part of the model, but a two-tower model's position
    // features (which no tower may read).
    let gate = if m.gate.inputs.is_empty() {
        None
    } else {
        Some(resolve_input("model.gate.inputs", &m.gate.inputs, groups, &name)?)
    };
    let read: Vec<FeatureRef> = head
        .features()
        .into_iter()
        .chain(position_tower.iter().flat_map(|p| p.input.features()))
        .chain(gate.iter().flat_map(InputSpec::features))
        .collect();
    let reads_position = |f: &FeatureRef| {
        let column = match *f {
            FeatureRef::Categorical(i) => categorical[i].column.as_str(),
            FeatureRef::Dense(i) => dense[i].column.as_str(),
        };
        two_tower.is_some() && Some(column) == position_column
    };
    if let Some(f) =
        all_features(categorical.len(), dense.len()).into_iter().find(|f| !read.contains(f) && !reads_position(f))
    {
        return Err((
            "model.inputs".into(),
            format!(
                "feature `{}` is read by no part of the model (it is in none of the groups `inputs` \
                 lists, nor in the position tower's); add its group or remove the feature",
                name(f)
            ),
        ));
    }
    if let Some(sp) = position_tower.as_ref().and_then(|p| p.serve_position.as_ref()) {
        let head_features = head.features();
        if let Some(&i) = sp.features.iter().find(|&&i| head_features.contains(&FeatureRef::Categorical(i))) {
            return Err((
                "model.position_tower.serve_position".into(),
                format!(
                    "the position feature `{}` also feeds the head: serve_position fixes the position the \
                     tower sees, so position must feed only the tower (take its group out of `[model] inputs`)",
                    categorical[i].name
                ),
            ));
        }
    }
    Ok(ModelInputs { head, position_tower, two_tower, gate })
}

/// Resolves `[model.two_tower.user] inputs` and `[model.two_tower.item] inputs`.
fn two_tower_inputs(
    tt: &TwoTowerSection,
    groups: &[FeatureGroup],
    categorical: &[CategoricalFeature],
    dense: &[DenseFeature],
    position_column: Option<&str>,
    name: &dyn Fn(FeatureRef) -> String,
) -> Result<TwoTowerInputs, KeyError> {
    let user = resolve_input("model.two_tower.user.inputs", &tt.user.inputs, groups, name)?;
    let item = resolve_input("model.two_tower.item.inputs", &tt.item.inputs, groups, name)?;
    let column = |f: FeatureRef| match f {
        FeatureRef::Categorical(i) => categorical[i].column.as_str(),
        FeatureRef::Dense(i) => dense[i].column.as_str(),
    };
    for (side, spec) in [("user", &user), ("item", &item)] {
        let key = format!("model.two_tower.{side}.inputs");
        if let Some(f) = spec.features().into_iter().find(|&f| Some(column(f)) == position_column) {
            return Err((
                key,
                format!(
                    "feature `{}` reads the position column: position is per candidate and unknown when \
                     the light ranker scores, so neither tower may read it",
                    name(f)
                ),
            ));
        }
    }
    if let Some(g) = item.groups.iter().find(|g| g.name == "bias") {
        return Err((
            "model.two_tower.item.inputs".into(),
            format!("group `{}` holds bias features; the item tower reads only the item's features", g.name),
        ));
    }
    let user_features = user.features();
    if let Some(f) = item.features().into_iter().find(|f| user_features.contains(f)) {
        return Err((
            "model.two_tower.item.inputs".into(),
            format!(
                "feature `{}` is in both towers' groups: the item tower must read only the item's features \
                 (its embeddings are computed once per item, without the request)",
                name(f)
            ),
        ));
    }
    Ok(TwoTowerInputs { user, item })
}

/// Resolves `serve_position = n`: the tower's features reading the `[columns] position`
/// column, which must exist and be single-valued categorical features.
fn serve_position(
    n: i64,
    input: &InputSpec,
    categorical: &[CategoricalFeature],
    dense: &[DenseFeature],
    position_column: Option<&str>,
    name: &dyn Fn(FeatureRef) -> String,
) -> Result<ServePosition, KeyError> {
    let key = "model.position_tower.serve_position";
    let err = |m: String| (key.to_string(), m);
    let column = position_column.ok_or_else(|| {
        err("the position feature is the tower's feature that reads the `[columns] position` column, \
             and the config sets no `[columns] position`"
            .into())
    })?;
    let mut features = Vec::new();
    for f in input.features() {
        match f {
            FeatureRef::Categorical(i) if categorical[i].column == column => {
                if categorical[i].pooling.is_some() {
                    return Err(err(format!(
                        "the position feature `{}` is multi-valued; a position is one value",
                        categorical[i].name
                    )));
                }
                features.push(i);
            }
            FeatureRef::Dense(i) if dense[i].column == column => {
                return Err(err(format!(
                    "the position feature `{}` is dense; serve_position needs position as a categorical \
                     feature (a dense value would need the run's fitted statistics)",
                    dense[i].name
                )));
            }
            _ => {}
        }
    }
    if features.is_empty() {
        let read: Vec<String> = input.features().into_iter().map(name).collect();
        return Err(err(format!(
            "the tower's groups hold no feature reading the `[columns] position` column `{column}` (they \
             hold {}): nothing to set to position {n}",
            read.join(", ")
        )));
    }
    Ok(ServePosition { position: n as u32, features })
}
