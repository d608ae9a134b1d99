//! Warm start (`mixrank train --init CHECKPOINT`): carries a parent checkpoint's
//! weights, optimizer state and dense statistics into the model a (possibly changed)
//! config builds, and reports every difference.
//!
//! What is matched, and how:
//! - **Embedding tables by name.** Same size: copied with their sparse-optimizer state.
//!   Added: fresh (the new model's initialisation). Removed: dropped. Different `dim`
//!   or hashed ↔ vocabulary: re-initialised. Vocabulary changed: rows remapped by
//!   value (new values and the out-of-vocabulary row start fresh / from the old OOV
//!   row); a vocabulary learned from the training split is one too (`start` keeps the
//!   parent's learned vocabulary when the table's name and rule are unchanged, so its
//!   rows are copied as they are). Hashed, `buckets` changed: a value's row is `h mod buckets`, so when the new
//!   size is a multiple `k·old`, new row `r` takes old row `r mod old` (exact: every
//!   value keeps its trained vector); when the old size is a multiple `k·new`, new row
//!   `r` takes the mean of old rows `r, r + new, …` (the vectors of the values that now
//!   collide); otherwise a value's old row cannot be found without its hash, and the
//!   table is re-initialised.
//! - **Model input columns by feature, parameter axes by role.** Each part of the model
//!   reads a named input, its feature groups' columns: `head` (`[emb | dense]` without
//!   `[model] inputs`), `gates` (surface-aware gating's `[model.gate] inputs`),
//!   `position_tower`, and a two-tower model's `user` and `item` ([`model_inputs`]);
//!   each column is keyed by its feature (and table and dim for embeddings). Every
//!   parameter axis has a declared role (`mixrank_nn::Axis`, resolved through the
//!   modules' `ParamVisitor::within` declarations by `Parameters::params_with_roles`):
//!   the runs of positions that are a model input's columns, and the others. When an
//!   input's layout changes, exactly the axes (or runs of an axis, as in a parallel
//!   DCN's `[input | deep]`) indexed by that input are remapped column by column, with
//!   that input's old and new columns: kept features keep their weights and Adam
//!   moments, added features' columns start fresh (moments zero), removed ones are
//!   dropped. Every other axis must match exactly (refused otherwise, naming the
//!   parameter and the axis), however wide it is. Refused as well: an axis whose
//!   positions mix model-input columns without a per-column map (a mixture of experts
//!   whose outputs carry different columns; a FinalMLP gate over a column slice) when
//!   input columns change, and any change of the position tower's input (its groups
//!   define the bias model; change them by training from scratch). A hidden width that
//!   follows the input width (MaskNet's mask generator, `reduction_ratio` × the input)
//!   makes an input width change refused for that expert: units are not columns.
//! - **The head architecture must not change**: a different `[model]` section or task
//!   list is refused with the differing keys (re-initialising experts or towers would
//!   silently throw away most of the parent). With per-surface towers (`[model.tower]
//!   per_surface`) the `[columns] segment` values must be the parent's too, in order (a
//!   tower per value, `towers.<t>.surface.<s>.*`): refused otherwise, naming both lists.
//! - **Dense standardisation**: features present in the parent keep its mean/std (the
//!   weights were trained on that scale); added ones use statistics fitted on the new
//!   data.
//! - **Optimizers**: Adam's step count is the parent's; the sparse state follows its
//!   table when the sparse optimizer kind is unchanged, otherwise it starts fresh
//!   (reported).

use crate::checkpoint::Verified;
use crate::error::{Result, TrainError};
use crate::optimizers::{Optimizers, Sparse};
use mixrank_data::config::model::SparseOptimizer;
use mixrank_data::config::{ExperimentConfig, TableKind, TableSpec};
use mixrank_data::stats::DenseStats;
use mixrank_engine::Backend;
use mixrank_model::Model;
use mixrank_nn::Seg;
use std::collections::{BTreeMap, HashMap};

/// Keys of the head's input columns, in order: its feature groups' layout
/// (`[emb | dense]` by default).
pub fn input_columns(cfg: &ExperimentConfig) -> Vec<String> {
    spec_columns(cfg, &cfg.head_input())
}

/// The named model inputs and the keys of their columns, in layout order: `head`,
/// `gates` (surface-aware gating), `position_tower`, `user` and `item` (two-tower), each
/// present when the config has it. These are the names models declare with
/// `mixrank_nn::Part::Input`.
pub fn model_inputs(cfg: &ExperimentConfig) -> BTreeMap<&'static str, Vec<String>> {
    let mut out = BTreeMap::new();
    let two_tower = cfg.inputs.as_ref().is_some_and(|i| i.two_tower.is_some());
    if !two_tower {
        // A two-tower model's `head` spec is both towers' groups; its parameters read
        // `user` and `item`.
        out.insert("head", input_columns(cfg));
    }
    if let Some(g) = cfg.gate_input() {
        out.insert("gates", spec_columns(cfg, &g));
    }
    if let Some(i) = &cfg.inputs {
        if let Some(t) = &i.position_tower {
            out.insert("position_tower", spec_columns(cfg, &t.input));
        }
        if let Some(t) = &i.two_tower {
            out.insert("user", spec_columns(cfg, &t.user));
            out.insert("item", spec_columns(cfg, &t.item));
        }
    }
    out
}

/// What each model input is called in reports.
fn input_label(name: &str) -> &str {
    match name {
        "head" => "head input",
        "gates" => "gate input",
        "position_tower" => "position tower input",
        "user" => "user tower input",
        "item" => "item tower input",
        other => other,
    }
}

/// Keys of one input's columns, in its layout order.
fn spec_columns(cfg: &ExperimentConfig, spec: &mixrank_data::config::groups::InputSpec) -> Vec<String> {
    use mixrank_data::config::groups::BlockSource;
    let mut out = Vec::new();
    for block in spec.blocks(&cfg.dense) {
        match block.source {
            BlockSource::Embedding(i) => {
                let (f, t) = (&cfg.categorical[i], &cfg.tables[cfg.categorical[i].table]);
                out.extend((0..t.dim).map(|j| format!("cat:{}:{}:{}:{j}", f.name, t.name, t.dim)));
            }
            BlockSource::DenseValue(i) => out.push(format!("dense:{}", cfg.dense[i].name)),
            BlockSource::MissingIndicator(i) => out.push(format!("missing:{}", cfg.dense[i].name)),
        }
    }
    out
}

/// Where each row of a new table comes from: old rows whose mean it takes (empty =
/// fresh).
type RowMap = Vec<Vec<usize>>;

/// The row mapping of one table and a line describing it (`None` = copied as is).
fn table_map(old: &TableSpec, new: &TableSpec) -> (Option<RowMap>, Option<String>) {
    let (o, n) = (old.rows() as usize, new.rows() as usize);
    let name = &new.name;
    if old.dim != new.dim {
        return (
            Some(vec![Vec::new(); n]),
            Some(format!("table `{name}`: re-initialised (dim {} -> {})", old.dim, new.dim)),
        );
    }
    if let (Some((ov, oi)), Some((nv, _))) = (old.kind.vocabulary(), new.kind.vocabulary()) {
        if ov == nv {
            return (None, None);
        }
        let mut map: RowMap = nv.iter().map(|v| oi.get(v).map(|&i| vec![i as usize]).unwrap_or_default()).collect();
        map.push(vec![ov.len()]); // out-of-vocabulary row
        let kept = map[..nv.len()].iter().filter(|m| !m.is_empty()).count();
        return (
            Some(map),
            Some(format!(
                "table `{name}`: vocabulary remapped by value ({kept} of {} values kept, {} new, {} dropped)",
                nv.len(),
                nv.len() - kept,
                ov.len() - kept
            )),
        );
    }
    match (&old.kind, &new.kind) {
        (TableKind::Hashed { .. }, TableKind::Hashed { .. }) if o == n => (None, None),
        (TableKind::Hashed { .. }, TableKind::Hashed { .. }) if n % o == 0 => (
            Some((0..n).map(|r| vec![r % o]).collect()),
            Some(format!(
                "table `{name}`: remapped, buckets {o} -> {n} (new row r takes old row r mod {o}; exact for every value)"
            )),
        ),
        (TableKind::Hashed { .. }, TableKind::Hashed { .. }) if o % n == 0 => (
            Some((0..n).map(|r| (r..o).step_by(n).collect()).collect()),
            Some(format!(
                "table `{name}`: remapped, buckets {o} -> {n} (new row r is the mean of the {} old rows r mod {n} that now collide)",
                o / n
            )),
        ),
        (TableKind::Hashed { .. }, TableKind::Hashed { .. }) => (
            Some(vec![Vec::new(); n]),
            Some(format!(
                "table `{name}`: re-initialised, buckets {o} -> {n} (neither a multiple of the other, so a value's old row is unknown)"
            )),
        ),
        _ => (
            Some(vec![Vec::new(); n]),
            Some(format!("table `{name}`: re-initialised (switched between hashed and vocabulary)")),
        ),
    }
}

/// Applies a row map to `[rows, dim]` data: mapped rows take the mean of their
/// sources, unmapped ones keep `dst` (fresh).
fn map_rows(map: &RowMap, dim: usize, src: &[f32], dst: &mut [f32]) {
    for (r, from) in map.iter().enumerate() {
        let out = &mut dst[r * dim..(r + 1) * dim];
        match from[..] {
            [] => continue,
            // One source: copied bit for bit (a sum from 0.0 would turn -0.0 into 0.0).
            [o] => {
                out.copy_from_slice(&src[o * dim..(o + 1) * dim]);
                continue;
            }
            _ => {}
        }
        out.fill(0.0);
        for &o in from {
            for (d, s) in out.iter_mut().zip(&src[o * dim..(o + 1) * dim]) {
                *d += s;
            }
        }
        let k = from.len() as f32;
        out.iter_mut().for_each(|d| *d /= k);
    }
}

/// How the new values of one n-d parameter are read from the parent's: for each axis,
/// `None` (identity) or a map new index → old index (`None` = fresh).
struct AxisMaps(Vec<Option<Vec<Option<usize>>>>);

impl AxisMaps {
    /// Copies `src` (parent shape) into `dst` (new shape) wherever every remapped axis
    /// has a source; other elements keep `fresh`'s value.
    fn apply(&self, old: &[usize], new: &[usize], src: &[f32], dst: &mut [f32], fresh: impl Fn(usize) -> f32) {
        let mut idx = vec![0usize; new.len()];
        for (flat, d) in dst.iter_mut().enumerate() {
            // Old flat index, row-major.
            let mut o = 0usize;
            let mut ok = true;
            for a in 0..new.len() {
                let oi = match &self.0[a] {
                    None => Some(idx[a]),
                    Some(m) => m[idx[a]],
                };
                match oi {
                    Some(i) => o = o * old[a] + i,
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            *d = if ok { src[o] } else { fresh(flat) };
            for a in (0..new.len()).rev() {
                idx[a] += 1;
                if idx[a] < new[a] {
                    break;
                }
                idx[a] = 0;
            }
        }
    }
}

/// Flattens a TOML value into `key.path = value` lines (for diffs).
fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, x) in t {
                flatten(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, x, out);
            }
        }
        toml::Value::Array(a) if a.iter().any(|x| x.is_table()) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// A serialisable section as a TOML value (for diffs).
pub(crate) fn toml_value(x: &impl serde::Serialize) -> toml::Value {
    toml::Value::try_from(x).unwrap_or_else(|_| toml::Value::String("(absent)".into()))
}

/// Keys whose values differ between two TOML values, as `key: old -> new`.
pub(crate) fn differing_keys(prefix: &str, a: &toml::Value, b: &toml::Value) -> Vec<String> {
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    flatten(prefix, a, &mut fa);
    flatten(prefix, b, &mut fb);
    let mut keys: Vec<String> = fa.keys().chain(fb.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| fa.get(k) != fb.get(k))
        .map(|k| {
            let show = |m: &BTreeMap<String, String>| m.get(&k).cloned().unwrap_or_else(|| "(absent)".into());
            format!("{k}: {} -> {}", show(&fa), show(&fb))
        })
        .collect()
}

/// One model input's column layout, parent vs new model.
struct Layout {
    old: usize,
    new: usize,
    /// New column → its old column (`None`: fresh).
    map: Vec<Option<usize>>,
    changed: bool,
}

/// Lines describing how one input's columns changed (features added, removed, or with
/// a new table or dim), ending with the width change.
fn describe_layout_change(input: &str, old_cols: &[String], new_cols: &[String]) -> Vec<String> {
    let mut changes = Vec::new();
    let label = input_label(input);
    let feature_of = |c: &str| c.split(':').take(2).collect::<Vec<_>>().join(":");
    let group = |cols: &[String]| {
        let mut g: BTreeMap<String, usize> = BTreeMap::new();
        for c in cols {
            *g.entry(feature_of(c)).or_default() += 1;
        }
        g
    };
    let (og, ng) = (group(old_cols), group(new_cols));
    let describe = |k: &str| {
        let (kind, name) = k.split_once(':').unwrap_or(("", k));
        let kind = match kind {
            "cat" => "categorical feature",
            "dense" => "dense feature",
            _ => "missing indicator of",
        };
        format!("{kind} `{name}`")
    };
    for (k, n) in &ng {
        if !og.contains_key(k) {
            changes.push(format!("{}: added, {n} fresh {label} column(s)", describe(k)));
        }
    }
    for (k, n) in &og {
        if !ng.contains_key(k) {
            changes.push(format!("{}: removed, {n} {label} column(s) dropped", describe(k)));
        }
    }
    for c in new_cols {
        let f = feature_of(c);
        if og.contains_key(&f) && !old_cols.contains(c) && c.ends_with(":0") {
            changes.push(format!("{}: table or dim changed, its {label} columns start fresh", describe(&f)));
        }
    }
    changes.push(format!(
        "{label} width {} -> {}: the weights indexed by it remapped column by column",
        old_cols.len(),
        new_cols.len()
    ));
    changes
}

/// The map of axis `a` of parameter `name` (`o` long in the parent, `n` now), from the
/// segments its roles resolve to: `None` (identity) when no model input that changed
/// indexes it, else new index → old index (`None` = fresh).
fn axis_map(
    name: &str,
    a: usize,
    o: usize,
    n: usize,
    segs: &[Seg],
    layouts: &BTreeMap<&'static str, Layout>,
    any_changed: bool,
) -> std::result::Result<Option<Vec<Option<usize>>>, String> {
    let exact = |why: &str| {
        if o == n {
            Ok(None)
        } else {
            Err(format!("parameter `{name}` axis {a} has length {o} in the parent, {n} now ({why})"))
        }
    };
    if segs.iter().all(|s| *s == Seg::Own) {
        return exact("not indexed by a model input");
    }
    if segs.contains(&Seg::Mixed) {
        if any_changed {
            return Err(format!(
                "parameter `{name}` axis {a} mixes model input columns with no per-column map (e.g. a mixture of \
                 experts whose outputs carry different columns), and input columns changed; train from scratch"
            ));
        }
        return exact("mixes model input columns");
    }
    let mut inputs = Vec::new();
    for s in segs {
        if let Seg::Input(i) = s {
            let l = layouts.get(i).ok_or_else(|| {
                format!("parameter `{name}` axis {a} reads model input `{i}`, which the config lacks")
            })?;
            if l.changed && *i == "position_tower" {
                return Err(format!(
                    "parameter `{name}` axis {a} is indexed by the position tower's input, whose columns changed; \
                     the position tower's groups must stay the same in a warm start (they define the bias model) — \
                     train from scratch to change them"
                ));
            }
            inputs.push(l);
        }
    }
    if !inputs.iter().any(|l| l.changed) {
        return exact("its model input columns did not change");
    }
    // The runs of own positions: at most one, its length what the inputs leave.
    let own = segs.iter().filter(|s| **s == Seg::Own).count();
    let (known_o, known_n): (usize, usize) = (inputs.iter().map(|l| l.old).sum(), inputs.iter().map(|l| l.new).sum());
    let own_len = match own {
        0 if (known_o, known_n) == (o, n) => 0,
        1 if o >= known_o && n >= known_n && o - known_o == n - known_n => o - known_o,
        _ => {
            return Err(format!(
                "parameter `{name}` axis {a} (length {o} in the parent, {n} now) does not split into its roles {segs:?}"
            ))
        }
    };
    let mut map = Vec::with_capacity(n);
    let (mut off_o, mut inputs) = (0, inputs.into_iter());
    for s in segs {
        match s {
            Seg::Input(_) => {
                let l = inputs.next().expect("one layout per input segment");
                map.extend(l.map.iter().map(|m| m.map(|i| off_o + i)));
                off_o += l.old;
            }
            _ => {
                map.extend((0..own_len).map(|i| Some(off_o + i)));
                off_o += own_len;
            }
        }
    }
    Ok(Some(map))
}

/// Carries `parent` into `model`, `optim` and `stats` (built and fitted for `cfg`) and
/// returns one line per change. Refuses a changed head architecture or task list.
pub fn warm_start<B: Backend>(
    parent: &Verified,
    cfg: &ExperimentConfig,
    ops: &B,
    model: &mut dyn Model<B>,
    optim: &mut Optimizers<B>,
    stats: &mut DenseStats,
) -> Result<Vec<String>> {
    let refuse = |message: String| TrainError::WarmStart { parent: parent.dir.clone(), message };
    let pcfg = parent.config()?;
    let mut diff = differing_keys("model", &toml_value(&pcfg.wire.model), &toml_value(&cfg.wire.model));
    let tasks = |c: &ExperimentConfig| c.tasks.iter().map(|t| format!("{}:{:?}", t.name, t.kind)).collect::<Vec<_>>();
    if tasks(&pcfg) != tasks(cfg) {
        diff.push(format!("tasks: {:?} -> {:?}", tasks(&pcfg), tasks(cfg)));
    }
    if !diff.is_empty() {
        return Err(refuse(format!(
            "the head architecture changed ({}); warm start needs the same [model] and tasks — train from scratch instead",
            diff.join("; ")
        )));
    }
    // Per-surface towers (`[model.tower] per_surface`, the same in both by now): one
    // tower per `[columns] segment` value, named by its id, so the surfaces must be the
    // parent's, in the parent's order.
    let per_surface = cfg.model.as_ref().is_some_and(|m| m.tower.per_surface);
    if per_surface && pcfg.segment_names() != cfg.segment_names() {
        return Err(refuse(format!(
            "per-surface towers ([model.tower] per_surface) need the parent's surfaces: [columns] segment \
             values {:?} in the parent, {:?} now (a tower per value, by position) — train from scratch instead",
            pcfg.segment_names(),
            cfg.segment_names()
        )));
    }
    let mut changes = Vec::new();
    let weights = parent.weights()?;
    let opt_file = parent.optimizer()?;
    let pm = &parent.manifest.optimizer;

    // Embedding tables and their sparse state.
    let sparse_same = match (&optim.sparse, pm.sparse) {
        (Some(Sparse::Adagrad(_)), Some(SparseOptimizer::RowwiseAdagrad)) => true,
        (Some(Sparse::Lazy(_)), Some(SparseOptimizer::LazyAdam)) => true,
        (Some(_), Some(k)) => {
            changes.push(format!("sparse optimizer changed from {k:?}: embedding optimizer state starts fresh"));
            false
        }
        _ => false,
    };
    let old_tables: HashMap<&str, (usize, &TableSpec)> =
        pcfg.tables.iter().enumerate().map(|(i, t)| (t.name.as_str(), (i, t))).collect();
    for t in &pcfg.tables {
        if !cfg.tables.iter().any(|n| n.name == t.name) {
            changes.push(format!("table `{}`: dropped ({} rows x {})", t.name, t.rows(), t.dim));
        }
    }
    let bad = |m: String| refuse(m);
    for (ti, spec) in cfg.tables.iter().enumerate() {
        let Some(&(oi, old)) = old_tables.get(spec.name.as_str()) else {
            changes.push(format!("table `{}`: added, fresh ({} rows x {})", spec.name, spec.rows(), spec.dim));
            continue;
        };
        let (map, line) = table_map(old, spec);
        changes.extend(line);
        let identity: RowMap;
        let map = match map {
            Some(m) => m,
            None => {
                identity = (0..spec.rows() as usize).map(|r| vec![r]).collect();
                identity
            }
        };
        let (orows, dim) = (old.rows() as usize, old.dim);
        let emb = model.embeddings_mut().ok_or_else(|| bad("the new model has no embeddings".into()))?;
        if old.dim == spec.dim {
            let src = weights.f32(&format!("emb.tables.{oi}"), &[orows, dim]).map_err(bad)?;
            let table = &mut emb.tables_mut()[ti];
            let mut value = table.read_value(ops).map_err(|e| bad(e.to_string()))?;
            map_rows(&map, dim, &src, &mut value);
            ops.write(&value, &mut table.value).map_err(|e| bad(e.to_string()))?;
        }
        if !sparse_same || old.dim != spec.dim {
            continue;
        }
        let nrows = spec.rows() as usize;
        match optim.sparse.as_mut() {
            Some(Sparse::Adagrad(o)) => {
                let src = opt_file.f32(&format!("adagrad.acc.emb.tables.{oi}"), &[orows]).map_err(bad)?;
                let mut acc = o.accumulators(ops, ti).map_err(|e| bad(e.to_string()))?;
                map_rows(&map, 1, &src, &mut acc);
                o.set_accumulators(ops, ti, &acc).map_err(|e| bad(e.to_string()))?;
            }
            Some(Sparse::Lazy(o)) => {
                let m_src = opt_file.f32(&format!("lazy_adam.m.emb.tables.{oi}"), &[orows, dim]).map_err(bad)?;
                let v_src = opt_file.f32(&format!("lazy_adam.v.emb.tables.{oi}"), &[orows, dim]).map_err(bad)?;
                let s_src = opt_file.u32(&format!("lazy_adam.steps.emb.tables.{oi}"), &[orows]).map_err(bad)?;
                let (mut m, mut v, mut s) = o.state(ops, ti).map_err(|e| bad(e.to_string()))?;
                map_rows(&map, dim, &m_src, &mut m);
                map_rows(&map, dim, &v_src, &mut v);
                for (r, from) in map.iter().enumerate().take(nrows) {
                    if let Some(max) = from.iter().map(|&o| s_src[o]).max() {
                        s[r] = max;
                    }
                }
                o.set_state(ops, ti, pm.sparse_steps, &m, &v, &s).map_err(|e| bad(e.to_string()))?;
            }
            None => {}
        }
    }

    // Model input layouts, and the parameters' axes by role.
    let (old_inputs, new_inputs) = (model_inputs(&pcfg), model_inputs(cfg));
    let mut layouts: BTreeMap<&'static str, Layout> = BTreeMap::new();
    for (&name, new_cols) in &new_inputs {
        let old_cols = old_inputs.get(name).cloned().unwrap_or_default();
        if old_cols != *new_cols {
            changes.extend(describe_layout_change(name, &old_cols, new_cols));
        }
        let pos: HashMap<&str, usize> = old_cols.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
        let map = new_cols.iter().map(|c| pos.get(c.as_str()).copied()).collect();
        layouts.insert(name, Layout { old: old_cols.len(), new: new_cols.len(), map, changed: old_cols != *new_cols });
    }
    let any_changed = layouts.values().any(|l| l.changed);
    let (mut ms, mut vs) = (Vec::new(), Vec::new());
    let mut err = None;
    model.params_with_roles(&mut |name, p, axes| {
        let result = (|| -> std::result::Result<(), String> {
            let key = format!("head.{name}");
            let old = weights.shape(&key).ok_or_else(|| format!("parameter `{name}` is not in the parent"))?;
            if old.len() != p.shape.len() {
                return Err(format!("parameter `{name}` has shape {old:?} in the parent, {:?} now", p.shape));
            }
            let mut maps = Vec::new();
            for (a, (&o, &n)) in old.iter().zip(&p.shape).enumerate() {
                maps.push(axis_map(name, a, o, n, &axes[a], &layouts, any_changed)?);
            }
            let maps = AxisMaps(maps);
            let n = p.len();
            let src = weights.f32(&key, &old)?;
            let fresh = p.read_value(ops).map_err(|e| e.to_string())?;
            let mut value = vec![0f32; n];
            maps.apply(&old, &p.shape, &src, &mut value, |j| fresh[j]);
            ops.write(&value, &mut p.value).map_err(|e| e.to_string())?;
            let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
            let m_src = opt_file.f32(&format!("adam.m.{key}"), &old)?;
            let v_src = opt_file.f32(&format!("adam.v.{key}"), &old)?;
            maps.apply(&old, &p.shape, &m_src, &mut m, |_| 0.0);
            maps.apply(&old, &p.shape, &v_src, &mut v, |_| 0.0);
            ms.push(m);
            vs.push(v);
            Ok(())
        })();
        if let Err(e) = result {
            err.get_or_insert(e);
        }
    });
    if let Some(e) = err {
        return Err(refuse(e));
    }
    optim.adam.set_state(ops, pm.dense_steps, ms, vs).map_err(|e| refuse(e.to_string()))?;

    // Dense standardisation: the parent's for features it had.
    let old_dense: HashMap<&str, usize> = pcfg.dense.iter().enumerate().map(|(i, d)| (d.name.as_str(), i)).collect();
    let mut kept = 0;
    for (j, d) in cfg.dense.iter().enumerate() {
        if let Some(&o) = old_dense.get(d.name.as_str()) {
            stats.mean[j] = parent.manifest.dense_stats.mean[o];
            stats.std[j] = parent.manifest.dense_stats.std[o];
            kept += 1;
        }
    }
    if kept < cfg.dense.len() {
        changes.push(format!(
            "dense standardisation: {kept} feature(s) keep the parent's, {} fitted on this run's data",
            cfg.dense.len() - kept
        ));
    }
    Ok(changes)
}
