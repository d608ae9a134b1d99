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
//! - **Head input columns by feature.** The head's input is its feature groups'
//!   columns (`[emb | dense]` without `[model] inputs`); each input
//!   column is keyed by its feature (and table and dim for embeddings). When that
//!   layout changes, every axis of a head parameter whose length is the input width
//!   (old width in the parent, new width in the new model) is remapped column by
//!   column: kept features keep their weights and Adam moments, added features' columns
//!   start fresh (moments zero), removed ones are dropped. Other axes must match.
//!   (Limitation: a hidden axis that happens to be exactly as wide as the input would
//!   be remapped too; keep hidden sizes different from the input width when changing
//!   features.)
//! - **The head architecture must not change**: a different `[model]` section or task
//!   list is refused with the differing keys (re-initialising experts or towers would
//!   silently throw away most of the parent).
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
use std::collections::{BTreeMap, HashMap};

/// Keys of the head's input columns, in order: its feature groups' layout
/// (`[emb | dense]` by default).
pub fn input_columns(cfg: &ExperimentConfig) -> Vec<String> {
    use mixrank_data::config::groups::BlockSource;
    let mut out = Vec::new();
    for block in cfg.head_input().blocks(&cfg.dense) {
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

    // Head input layout.
    let (old_cols, new_cols) = (input_columns(&pcfg), input_columns(cfg));
    let col_map: Option<Vec<Option<usize>>> = (old_cols != new_cols).then(|| {
        let pos: HashMap<&str, usize> = old_cols.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
        new_cols.iter().map(|c| pos.get(c.as_str()).copied()).collect()
    });
    let feature_of = |c: &str| c.split(':').take(2).collect::<Vec<_>>().join(":");
    if col_map.is_some() {
        let group = |cols: &[String]| {
            let mut g: BTreeMap<String, usize> = BTreeMap::new();
            for c in cols {
                *g.entry(feature_of(c)).or_default() += 1;
            }
            g
        };
        let (og, ng) = (group(&old_cols), group(&new_cols));
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
                changes.push(format!("{}: added, {n} fresh head input column(s)", describe(k)));
            }
        }
        for (k, n) in &og {
            if !ng.contains_key(k) {
                changes.push(format!("{}: removed, {n} head input column(s) dropped", describe(k)));
            }
        }
        for c in &new_cols {
            let f = feature_of(c);
            if og.contains_key(&f) && !old_cols.contains(c) && c.ends_with(":0") {
                changes.push(format!("{}: table or dim changed, its head input columns start fresh", describe(&f)));
            }
        }
        changes.push(format!(
            "head input width {} -> {}: input-side weights remapped column by column",
            old_cols.len(),
            new_cols.len()
        ));
    }
    let (od, nd) = (old_cols.len(), new_cols.len());
    let (mut ms, mut vs) = (Vec::new(), Vec::new());
    let mut err = None;
    model.params(&mut |name, p| {
        let result = (|| -> std::result::Result<(), String> {
            let key = format!("head.{name}");
            let old = weights.shape(&key).ok_or_else(|| format!("parameter `{name}` is not in the parent"))?;
            if old.len() != p.shape.len() {
                return Err(format!("parameter `{name}` has shape {old:?} in the parent, {:?} now", p.shape));
            }
            let mut maps = Vec::new();
            for (a, (&o, &n)) in old.iter().zip(&p.shape).enumerate() {
                match &col_map {
                    Some(cm) if o == od && n == nd => maps.push(Some(cm.clone())),
                    _ if o == n => maps.push(None),
                    _ => {
                        return Err(format!(
                            "parameter `{name}` axis {a} has length {o} in the parent, {n} now (not the input width)"
                        ))
                    }
                }
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
