//! Warm start across config changes: every kind of change is reported and maps the
//! parent's values where it should (checked element by element against the parent),
//! and leaves fresh values where it cannot; a changed head is refused.

use mixrank_data::simulate::{simulate_engagement, EngagementParams};
use mixrank_data::stats::DenseStats;
use mixrank_data::ExperimentConfig;
use mixrank_engine::CpuOps;
use mixrank_model::{build_model, Model};
use mixrank_train::checkpoint::{load, read_verified, Loaded};
use mixrank_train::optimizers::{Optimizers, Sparse};
use mixrank_train::warm_start::{input_columns, model_inputs, warm_start};
use mixrank_train::{train, TrainOptions};
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MODEL: &str = "[model]\narchitecture = \"shared_bottom\"\nexpert_dim = 8\ntower = { hidden = [8] }\n\
[[model.experts]]\nkind = \"mlp\"\nhidden = [24]\n[train]\nthreads = 1\nseed = 3\nsparse_optimizer = \"lazy_adam\"\n";

struct Parent {
    dir: tempfile::TempDir,
    config_text: String,
    run: PathBuf,
}

/// A parent trained for 4 steps on simulated engagement data.
fn parent() -> Parent {
    parent_with("", MODEL)
}

/// A parent with `extra` appended to the simulator's config and model file `model`.
fn parent_with(extra: &str, model: &str) -> Parent {
    let dir = tempfile::tempdir().unwrap();
    let p = EngagementParams {
        days: 3,
        requests_per_day: 60,
        users: 200,
        initial_ads: 100,
        advertisers: 20,
        ..Default::default()
    };
    let sim = simulate_engagement(&p, &dir.path().join("sim")).unwrap();
    let text = std::fs::read_to_string(&sim.config).unwrap().replace("batch_size = 2048", "batch_size = 64") + extra;
    std::fs::write(&sim.config, &text).unwrap();
    let cfg = config(dir.path(), &text, model);
    let run = dir.path().join("run");
    let mut opts = TrainOptions::new(&run);
    opts.max_steps = Some(4);
    train(cfg, &opts, &CpuOps::new()).unwrap();
    Parent { config_text: text, run, dir }
}

fn config(dir: &Path, text: &str, model: &str) -> Arc<ExperimentConfig> {
    let (c, m) = (dir.join("sim/child.toml"), dir.join("model.toml"));
    std::fs::write(&c, text).unwrap();
    std::fs::write(&m, model).unwrap();
    Arc::new(ExperimentConfig::load(&c).unwrap().with_model_file(&m).unwrap())
}

struct Child {
    cfg: Arc<ExperimentConfig>,
    model: Box<dyn Model<CpuOps>>,
    fresh: Box<dyn Model<CpuOps>>,
    optim: Optimizers<CpuOps>,
    stats: DenseStats,
    changes: Vec<String>,
}

fn child(p: &Parent, text: &str, model: &str) -> Result<Child, String> {
    let cfg = config(p.dir.path(), text, model);
    let ops = CpuOps::new();
    let build = || build_model(&cfg, &ops, 64, &mut rand::rngs::StdRng::seed_from_u64(cfg.train.seed)).unwrap();
    let (mut m, fresh) = (build(), build());
    let mut optim = Optimizers::new(&cfg.train, &ops, &mut *m).unwrap();
    let mut stats = DenseStats { mean: vec![-7.0; cfg.dense.len()], std: vec![7.0; cfg.dense.len()], rows: 0 };
    let parent = read_verified(&p.run.join("checkpoint")).unwrap();
    let changes = warm_start(&parent, &cfg, &ops, &mut *m, &mut optim, &mut stats).map_err(|e| e.to_string())?;
    Ok(Child { cfg, model: m, fresh, optim, stats, changes })
}

fn parent_model(p: &Parent) -> Loaded<CpuOps> {
    load(&p.run.join("checkpoint"), &CpuOps::new(), 64).unwrap()
}

fn table<'a>(m: &'a dyn Model<CpuOps>, cfg: &ExperimentConfig, name: &str) -> (&'a [f32], usize) {
    let i = cfg.tables.iter().position(|t| t.name == name).unwrap();
    let t = &m.embeddings().unwrap().tables()[i];
    (&t.value[..t.rows * t.dim], t.dim)
}

fn head(m: &mut dyn Model<CpuOps>) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    m.params(&mut |n, p| out.push((n.to_string(), p.shape.clone(), p.value[..p.len()].to_vec())));
    out
}

fn has(changes: &[String], want: &str) -> bool {
    changes.iter().any(|c| c.contains(want))
}

#[test]
fn same_config_copies_everything_and_reports_nothing() {
    let p = parent();
    let mut c = child(&p, &p.config_text, MODEL).unwrap();
    assert!(c.changes.is_empty(), "{:?}", c.changes);
    let mut parent = parent_model(&p);
    assert_eq!(head(&mut *c.model), head(&mut *parent.model));
    for t in &c.cfg.tables {
        assert_eq!(table(&*c.model, &c.cfg, &t.name), table(&*parent.model, &parent.config, &t.name));
    }
    assert_eq!(c.optim.adam.steps(), 4);
    let Some(Sparse::Lazy(o)) = &c.optim.sparse else { panic!("lazy adam") };
    assert_eq!(o.steps(), 4);
    assert!(o.state(&CpuOps::new(), 0).unwrap().2.iter().any(|&s| s > 0), "row step counts carried over");
    assert_eq!(c.stats.mean, parent.manifest.dense_stats.mean);
}

#[test]
fn resized_hash_tables_are_remapped_or_reinitialised() {
    let p = parent();
    let parent = parent_model(&p);
    let old_rows = parent.config.tables.iter().find(|t| t.name == "ad_id").unwrap().rows() as usize;
    let with_buckets = |n: usize| {
        p.config_text
            .replace(&format!("name = \"ad_id\"\nbuckets = {old_rows}"), &format!("name = \"ad_id\"\nbuckets = {n}"))
    };
    let (old, dim) = table(&*parent.model, &parent.config, "ad_id");
    // Doubled: new row r is old row r mod old_rows, exactly.
    let c = child(&p, &with_buckets(old_rows * 2), MODEL).unwrap();
    assert!(has(&c.changes, "table `ad_id`: remapped, buckets"), "{:?}", c.changes);
    let (new, _) = table(&*c.model, &c.cfg, "ad_id");
    for r in 0..old_rows * 2 {
        assert_eq!(new[r * dim..(r + 1) * dim], old[(r % old_rows) * dim..(r % old_rows + 1) * dim], "row {r}");
    }
    let Some(Sparse::Lazy(o)) = &c.optim.sparse else { panic!() };
    let ti = c.cfg.tables.iter().position(|t| t.name == "ad_id").unwrap();
    let parent_opt = read_verified(&p.run.join("checkpoint")).unwrap();
    let steps = parent_opt.optimizer().unwrap().u32(&format!("lazy_adam.steps.emb.tables.{ti}"), &[old_rows]).unwrap();
    assert!(o.state(&CpuOps::new(), ti).unwrap().2.iter().enumerate().all(|(r, &s)| s == steps[r % old_rows]));
    // Halved: new row r is the mean of old rows r and r + new.
    let half = old_rows / 2;
    let c = child(&p, &with_buckets(half), MODEL).unwrap();
    assert!(has(&c.changes, "the 2 old rows"), "{:?}", c.changes);
    let (new, _) = table(&*c.model, &c.cfg, "ad_id");
    for r in 0..half {
        for j in 0..dim {
            let want = (old[r * dim + j] + old[(r + half) * dim + j]) / 2.0;
            assert!((new[r * dim + j] - want).abs() <= 1e-7 * want.abs().max(1.0), "row {r}");
        }
    }
    // Not a multiple either way: re-initialised (the fresh model's values).
    let c = child(&p, &with_buckets(old_rows + 3), MODEL).unwrap();
    assert!(has(&c.changes, "table `ad_id`: re-initialised, buckets"), "{:?}", c.changes);
    assert_eq!(table(&*c.model, &c.cfg, "ad_id"), table(&*c.fresh, &c.cfg, "ad_id"));
    // The other tables are untouched copies in every case.
    assert_eq!(table(&*c.model, &c.cfg, "user_id"), table(&*parent.model, &parent.config, "user_id"));
}

#[test]
fn added_and_removed_features_remap_the_head_input_columns() {
    let p = parent();
    let mut parent = parent_model(&p);
    // advertiser_id removed, a new categorical feature on its own table, bid removed and
    // a new dense feature, a dim change on position_id, a new vocabulary for surface_id.
    let text = p
        .config_text
        .replace(
            "[[features.categorical]]\nname = \"advertiser_id\"",
            "[[features.categorical]]\nname = \"advertiser_new\"\ncolumn = \"advertiser_id\"",
        )
        .replace(
            "[[features.dense]]\nname = \"bid\"\nlog1p = true\nstandardize = true\n",
            "[[features.dense]]\nname = \"p_click_true\"\n",
        )
        .replace(
            "name = \"position_id\"\ncolumn = \"position\"\nbuckets = 64\ndim = 4",
            "name = \"position_id\"\ncolumn = \"position\"\nbuckets = 64\ndim = 6",
        )
        .replace(
            "vocabulary = [\"home_feed\", \"related_pins\", \"search\"]\ndim = 4",
            "vocabulary = [\"search\", \"home_feed\", \"shopping\"]\ndim = 4",
        );
    let mut c = child(&p, &text, MODEL).unwrap();
    for want in [
        "table `advertiser_id`: dropped",
        "table `advertiser_new`: added",
        "categorical feature `advertiser_new`: added",
        "categorical feature `advertiser_id`: removed",
        "dense feature `bid`: removed",
        "dense feature `p_click_true`: added",
        "table `position_id`: re-initialised (dim 4 -> 6)",
        "categorical feature `position_id`: table or dim changed",
        "table `surface_id`: vocabulary remapped by value (2 of 3 values kept, 1 new, 1 dropped)",
        "dense standardisation: 3 feature(s) keep the parent's, 1 fitted",
    ] {
        assert!(has(&c.changes, want), "missing {want:?} in {:#?}", c.changes);
    }
    // Vocabulary rows follow their values; the new value and OOV rows as documented.
    let (old, dim) = table(&*parent.model, &parent.config, "surface_id");
    let (new, _) = table(&*c.model, &c.cfg, "surface_id");
    let row = |v: &[f32], r: usize| v[r * dim..(r + 1) * dim].to_vec();
    assert_eq!(row(new, 0), row(old, 2), "search");
    assert_eq!(row(new, 1), row(old, 0), "home_feed");
    assert_eq!(row(new, 2), row(table(&*c.fresh, &c.cfg, "surface_id").0, 2), "shopping is fresh");
    assert_eq!(row(new, 3), row(old, 3), "out-of-vocabulary row");
    // Head input columns: kept features keep their weights, new ones are fresh.
    let (oc, nc) = (input_columns(&parent.config), input_columns(&c.cfg));
    let (ph, ch, fh) = (head(&mut *parent.model), head(&mut *c.model), head(&mut *c.fresh));
    let mut checked = 0;
    for ((name, shape, v), (_, _, f)) in ch.iter().zip(&fh) {
        let (_, pshape, pv) = ph.iter().find(|(n, _, _)| n == name).unwrap();
        if shape.len() == 2 && shape[0] == nc.len() {
            assert_eq!(pshape[0], oc.len(), "{name}");
            let w = shape[1];
            for (r, key) in nc.iter().enumerate() {
                let want = match oc.iter().position(|k| k == key) {
                    Some(o) => &pv[o * w..(o + 1) * w],
                    None => &f[r * w..(r + 1) * w],
                };
                assert_eq!(&v[r * w..(r + 1) * w], want, "{name} row {r} ({key})");
            }
            checked += 1;
        } else {
            assert_eq!((shape, v), (pshape, pv), "{name} is not input-side and is copied as is");
        }
    }
    assert!(checked >= 1, "the expert's first layer reads the input");
    // Dense statistics: the parent's for user_activity; p_click_true keeps this run's.
    let ui = c.cfg.dense.iter().position(|d| d.name == "user_activity").unwrap();
    let pi = parent.config.dense.iter().position(|d| d.name == "user_activity").unwrap();
    assert_eq!(c.stats.mean[ui], parent.manifest.dense_stats.mean[pi]);
    let ni = c.cfg.dense.iter().position(|d| d.name == "p_click_true").unwrap();
    assert_eq!(c.stats.mean[ni], -7.0);
}

#[test]
fn head_changes_are_refused_and_optimizer_kind_changes_are_reported() {
    let p = parent();
    let e = child(&p, &p.config_text, &MODEL.replace("hidden = [24]", "hidden = [32]")).err().unwrap();
    assert!(e.contains("head architecture changed") && e.contains("model.experts[0].hidden"), "{e}");
    assert!(e.contains("run/checkpoint"), "names the parent: {e}");
    let c = child(&p, &p.config_text, &MODEL.replace("sparse_optimizer = \"lazy_adam\"\n", "")).unwrap();
    assert!(has(&c.changes, "sparse optimizer changed from LazyAdam"), "{:?}", c.changes);
    let Some(Sparse::Adagrad(o)) = &c.optim.sparse else { panic!("row-wise adagrad") };
    assert!(o.accumulators(&CpuOps::new(), 0).unwrap().iter().all(|&a| a == 0.0), "fresh sparse state");
}

#[test]
fn the_position_tower_is_carried_and_a_grouped_head_input_is_remapped_by_feature() {
    // The tower reads position and device; position leaves the head, so the head's input
    // is not `[emb | dense]` and its columns are keyed through the groups' layout.
    let groups = "\n[feature_groups]\nbias = [\"position_id\", \"device_id\"]\ncontext = [\"device_id\"]\n";
    let model = MODEL.replace("[[model.experts]]", "position_tower = { hidden = [4] }\n[[model.experts]]");
    let p = parent_with(groups, &model);
    let mut parent = parent_model(&p);
    assert!(!input_columns(&parent.config).iter().any(|c| c.starts_with("cat:position_id")));
    // advertiser_id removed from the data config.
    let text = p.config_text.replace(
        "[[features.categorical]]\nname = \"advertiser_id\"",
        "[[features.categorical]]\nname = \"advertiser_gone\"\ncolumn = \"advertiser_id\"",
    );
    let mut c = child(&p, &text, &model).unwrap();
    assert!(has(&c.changes, "categorical feature `advertiser_id`: removed"), "{:?}", c.changes);
    let (oc, nc) = (input_columns(&parent.config), input_columns(&c.cfg));
    let (ph, ch) = (head(&mut *parent.model), head(&mut *c.model));
    let mut tower = 0;
    for (name, shape, v) in &ch {
        let (_, pshape, pv) = ph.iter().find(|(n, _, _)| n == name).unwrap();
        if name.starts_with("logit_sources.0.") {
            assert_eq!((shape, v), (pshape, pv), "{name}: the tower is copied");
            tower += 1;
        } else if shape.len() == 2 && shape[0] == nc.len() {
            let w = shape[1];
            for (r, key) in nc.iter().enumerate() {
                if let Some(o) = oc.iter().position(|k| k == key) {
                    assert_eq!(&v[r * w..(r + 1) * w], &pv[o * w..(o + 1) * w], "{name} row {r} ({key})");
                }
            }
        }
    }
    assert_eq!(tower, 4);
    // A changed bias group changes the tower's width: refused, naming the parameter.
    let wider = text
        .replace("bias = [\"position_id\", \"device_id\"]", "bias = [\"position_id\", \"device_id\", \"surface_id\"]");
    let e = child(&p, &wider, &model).err().unwrap();
    assert!(e.contains("logit_sources.0.blocks.0.linear.weight"), "{e}");
}

// ---- Role-based remapping (issue 11, item 7) ----
//
// The oracle below is written from the layers' maths, by parameter name, independently of
// the roles the layers declare: which runs of which axes are a model input's columns.

/// The train section every model file below ends with.
const TRAIN: &str = "[train]\nthreads = 1\nseed = 3\nsparse_optimizer = \"lazy_adam\"\n";

/// The simulated config's head input width (every feature in config order): 9 embeddings
/// (6 × 16 + 3 × 4) and 4 dense values plus one missing indicator.
const WIDTH: usize = 113;

/// `(axis, first position, model input)`: positions `first..first + width` of `axis` are
/// that input's columns.
type Roles = Vec<(usize, usize, &'static str)>;

/// Per model input: its old (parent) and new column keys.
type Cols = BTreeMap<&'static str, (Vec<String>, Vec<String>)>;

fn cols(parent: &ExperimentConfig, child: &ExperimentConfig) -> Cols {
    let (o, n) = (model_inputs(parent), model_inputs(child));
    n.into_iter().map(|(k, v)| (k, (o.get(k).cloned().unwrap_or_default(), v))).collect()
}

/// Swaps the config's `surface_id` and `device_id` entries: their 4 columns each trade
/// places in the head's input, whose width does not change.
fn swap_surface_and_device(text: &str) -> String {
    let surface = "[[features.categorical]]\nname = \"surface_id\"\ncolumn = \"surface\"\nvocabulary = [\"home_feed\", \"related_pins\", \"search\"]\ndim = 4\n";
    let device = "[[features.categorical]]\nname = \"device_id\"\ncolumn = \"device\"\nvocabulary = [\"ios\", \"android\", \"web\"]\ndim = 4\n";
    assert!(text.contains(surface) && text.contains(device), "the simulator's config changed");
    text.replace(surface, "@SURFACE@").replace(device, surface).replace("@SURFACE@", device)
}

/// Checks every parameter of `c` bit for bit: positions of an input-indexed run come from
/// the parent's column of the same key (fresh when the parent has none), every other
/// position from the same position in the parent. Returns the names with roles.
fn check_roles(
    parent: &mut dyn Model<CpuOps>,
    c: &mut Child,
    cols: &Cols,
    roles: impl Fn(&str) -> Roles,
) -> Vec<String> {
    let (ph, ch, fh) = (head(parent), head(&mut *c.model), head(&mut *c.fresh));
    let mut with_roles = Vec::new();
    for ((name, shape, v), (_, _, f)) in ch.iter().zip(&fh) {
        let (_, pshape, pv) = ph.iter().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("{name} in the parent"));
        let r = roles(name);
        if !r.is_empty() {
            with_roles.push(name.clone());
        }
        assert_eq!(shape.len(), pshape.len(), "{name}");
        let mut idx = vec![0usize; shape.len()];
        for (flat, got) in v.iter().enumerate() {
            // The parent's position of each axis (None: a fresh column).
            let mut old = Some(0usize);
            for a in 0..shape.len() {
                let p = idx[a];
                // Runs in order; positions after a run shift by its change of width.
                let mut o = None;
                let mut shift = 0isize;
                let mut inside = false;
                for &(_, start, input) in r.iter().filter(|(axis, _, _)| *axis == a) {
                    let (oc, nc) = &cols[input];
                    if p < start {
                        break;
                    }
                    if p < start + nc.len() {
                        let old_start = (start as isize + shift) as usize;
                        o = oc.iter().position(|k| *k == nc[p - start]).map(|o| old_start + o);
                        inside = true;
                        break;
                    }
                    shift += oc.len() as isize - nc.len() as isize;
                }
                if !inside {
                    o = Some((p as isize + shift) as usize);
                }
                old = match (old, o) {
                    (Some(acc), Some(o)) => {
                        assert!(o < pshape[a], "{name} axis {a}: position {o} of {pshape:?}");
                        Some(acc * pshape[a] + o)
                    }
                    _ => None,
                };
            }
            let want = match old {
                Some(o) => pv[o],
                None => f[flat],
            };
            assert_eq!(got.to_bits(), want.to_bits(), "{name} {idx:?} (roles {r:?})");
            for a in (0..shape.len()).rev() {
                idx[a] += 1;
                if idx[a] < shape[a] {
                    break;
                }
                idx[a] = 0;
            }
        }
    }
    with_roles
}

/// The roles of an MLP reading `input` at `prefix`: its first layer's rows.
fn mlp_roles(rest: &str, input: &'static str) -> Roles {
    if rest == "blocks.0.linear.weight" {
        vec![(0, 0, input)]
    } else {
        vec![]
    }
}

#[test]
fn hidden_axes_as_wide_as_the_input_are_kept_bit_for_bit_while_input_columns_move() {
    // The expert's hidden layers are exactly as wide as the input: only the first
    // layer's rows follow the moved columns, every hidden axis stays as trained.
    let model = MODEL.replace("hidden = [24]", &format!("hidden = [{WIDTH}, {WIDTH}]"));
    let p = parent_with("", &model);
    let mut parent = parent_model(&p);
    assert_eq!(input_columns(&parent.config).len(), WIDTH);
    let text = swap_surface_and_device(&p.config_text);
    let mut c = child(&p, &text, &model).unwrap();
    assert!(has(&c.changes, "head input width 113 -> 113"), "{:?}", c.changes);
    let cols = cols(&parent.config, &c.cfg);
    assert_ne!(cols["head"].0, cols["head"].1, "the columns moved");
    let named = check_roles(&mut *parent.model, &mut c, &cols, |name| {
        name.strip_prefix("experts.0.").map_or(vec![], |rest| mlp_roles(rest, "head"))
    });
    assert_eq!(named, ["experts.0.blocks.0.linear.weight"]);
}

/// An MMoE with every expert kind (and a projection after a parallel DCN), per-task gates.
const EXPERTS: &str = "[model]\narchitecture = \"mmoe\"\nexpert_dim = 16\ntower = { hidden = [8] }\n\
[[model.experts]]\nkind = \"mlp\"\nhidden = [113, 16]\n\
[[model.experts]]\nkind = \"dcnv2\"\ncross_layers = 2\nstructure = \"stacked\"\nhidden = [16]\n\
[[model.experts]]\nkind = \"dcnv2\"\ncross_layers = 2\nlow_rank = 4\nstructure = \"parallel\"\nhidden = [16]\n\
[[model.experts]]\nkind = \"masknet\"\nblocks = 2\nblock_dim = 16\nstructure = \"stacked\"\n\
[[model.experts]]\nkind = \"masknet\"\nblocks = 2\nblock_dim = 8\nstructure = \"parallel\"\n\
[[model.experts]]\nkind = \"finalmlp\"\nhidden = [16]\nheads = 2\n";

/// The roles of expert `e` of [`EXPERTS`] (`rest`: the name after `experts.<e>.`), each
/// reading the model input `input`.
fn expert_roles(e: usize, rest: &str, input: &'static str) -> Roles {
    let i = |axes: &[usize]| axes.iter().map(|&a| (a, 0, input)).collect::<Roles>();
    let block = |rest: &str| rest.split('.').nth(1).and_then(|b| b.parse::<usize>().ok());
    match e {
        0 => mlp_roles(rest, input),
        // DCN: every cross weight maps the input's columns to themselves; the deep part
        // reads the input (stacked: the cross output, the same columns); the parallel
        // one's projection reads `[cross | deep]`.
        1 | 2 if rest.starts_with("cross.") && rest.ends_with(".w") => i(&[0, 1]),
        1 | 2 if rest.starts_with("cross.") => i(&[0]),
        1 | 2 if rest == "deep.blocks.0.linear.weight" => i(&[0]),
        2 if rest == "proj.weight" => i(&[0]),
        // MaskNet: every block's mask generator reads the input; the blocks whose hidden
        // input is the input (serial: the first; parallel: all) mask its columns.
        3 | 4 if rest.ends_with("mask_agg.weight") => i(&[0]),
        3 | 4 if e == 4 || block(rest) == Some(0) => {
            match rest.split('.').skip(2).collect::<Vec<_>>().join(".").as_str() {
                "mask_proj.weight" => i(&[1]),
                "mask_proj.bias" | "norm_in.gamma" | "norm_in.beta" | "hidden.weight" => i(&[0]),
                _ => vec![],
            }
        }
        // FinalMLP: the feature gates read the input and give one gate per input column;
        // the streams read the gated input.
        5 => match rest {
            "gate1.blocks.0.linear.weight" | "gate2.blocks.0.linear.weight" => i(&[0]),
            "gate1.output.weight" | "gate2.output.weight" => i(&[1]),
            "gate1.output.bias" | "gate2.output.bias" => i(&[0]),
            "mlp1.blocks.0.linear.weight" | "mlp2.blocks.0.linear.weight" => i(&[0]),
            _ => vec![],
        },
        _ => vec![],
    }
}

/// The roles of an MMoE head's parameters (`name` without any tower prefix), its gates
/// reading `gate_rows` (`(first row, input)` runs).
fn mmoe_roles(name: &str, input: &'static str, gate_rows: &[(usize, &'static str)], gate_hidden: bool) -> Roles {
    if let Some(rest) = name.strip_prefix("experts.") {
        let (e, rest) = rest.split_once('.').unwrap();
        return expert_roles(e.parse().unwrap(), rest, input);
    }
    if let Some(rest) = name.strip_prefix("gates.") {
        let rest = rest.split_once('.').unwrap().1;
        let first = if gate_hidden { "hidden.blocks.0.linear.weight" } else { "weight" };
        if rest == first {
            return gate_rows.iter().map(|&(start, i)| (0, start, i)).collect();
        }
    }
    vec![]
}

/// Columns moved as in [`swap_surface_and_device`], then the width changed: position_id
/// 4 -> 6 columns, bid replaced by a new dense feature.
fn wider(text: &str) -> String {
    swap_surface_and_device(text)
        .replace(
            "name = \"position_id\"\ncolumn = \"position\"\nbuckets = 64\ndim = 4",
            "name = \"position_id\"\ncolumn = \"position\"\nbuckets = 64\ndim = 6",
        )
        .replace(
            "[[features.dense]]\nname = \"bid\"\nlog1p = true\nstandardize = true\n",
            "[[features.dense]]\nname = \"p_click_true\"\n",
        )
}

#[test]
fn every_expert_kind_and_the_gates_remap_by_role() {
    let model = format!("{EXPERTS}{TRAIN}");
    let p = parent_with("", &model);
    let mut parent = parent_model(&p);
    // The same experts without MaskNet across a width change (see the end).
    let no_masknet = model.replace(
        "[[model.experts]]\nkind = \"masknet\"\nblocks = 2\nblock_dim = 16\nstructure = \"stacked\"\n\
         [[model.experts]]\nkind = \"masknet\"\nblocks = 2\nblock_dim = 8\nstructure = \"parallel\"\n",
        "",
    );
    assert_ne!(no_masknet, model);
    let q = parent_with("", &no_masknet);
    let mut q_parent = parent_model(&q);
    let runs = [
        (&p, &mut parent, &model, swap_surface_and_device(&p.config_text)),
        (&q, &mut q_parent, &no_masknet, wider(&q.config_text)),
    ];
    for (p, parent, model, text) in runs {
        let mut c = child(p, &text, model).unwrap();
        let cols = cols(&parent.config, &c.cfg);
        let masknet = model.contains("masknet");
        // Without MaskNet, FinalMLP is expert 3.
        let kind = |e: usize| if masknet || e < 3 { e } else { e + 2 };
        let named = check_roles(&mut *parent.model, &mut c, &cols, |name| {
            let renamed = match name.strip_prefix("experts.").and_then(|r| r.split_once('.')) {
                Some((e, rest)) => format!("experts.{}.{rest}", kind(e.parse().unwrap())),
                None => name.to_string(),
            };
            mmoe_roles(&renamed, "head", &[(0, "head")], false)
        });
        let mut wanted = vec![
            "experts.0.blocks.0.linear.weight",
            "experts.1.cross.layers.1.w",
            "experts.2.cross.layers.0.u",
            "experts.2.proj.weight",
            "gates.3.weight",
        ];
        if masknet {
            wanted.extend([
                "experts.3.blocks.0.hidden.weight",
                "experts.3.blocks.1.mask_agg.weight",
                "experts.4.blocks.1.mask_proj.weight",
                "experts.5.gate2.output.weight",
                "experts.5.mlp1.blocks.0.linear.weight",
            ]);
        } else {
            assert!(has(&c.changes, "head input width 113 -> 115"), "{:?}", c.changes);
            wanted.extend(["experts.3.gate2.output.weight", "experts.3.mlp1.blocks.0.linear.weight"]);
        }
        for want in wanted {
            assert!(named.iter().any(|n| n == want), "{want} not in {named:?}");
        }
    }
    // MaskNet's mask generator is `reduction_ratio` times as wide as the input: a new
    // input width changes its hidden width, which is refused (not a column map).
    let e = child(&p, &wider(&p.config_text), &model).err().expect("refused");
    assert!(e.contains("experts.3.blocks.0.mask_agg.weight") && e.contains("axis 1"), "{e}");
}

#[test]
fn surface_aware_gates_remap_their_own_group() {
    // The gates read `[trunk | surface group]`; the group's columns move (same width), the
    // head's do not.
    let groups = "\n[feature_groups]\nsurface = [\"surface_id\", \"device_id\"]\n";
    let model = format!(
        "[model]\narchitecture = \"mmoe\"\nexpert_dim = 16\ntower = {{ hidden = [8] }}\n\
         gate = {{ inputs = [\"surface\"], hidden = [8] }}\n[[model.experts]]\nkind = \"mlp\"\nhidden = [16]\n\
         count = 2\n{TRAIN}"
    );
    let p = parent_with(groups, &model);
    let mut parent = parent_model(&p);
    let text =
        p.config_text.replace("surface = [\"surface_id\", \"device_id\"]", "surface = [\"device_id\", \"surface_id\"]");
    let mut c = child(&p, &text, &model).unwrap();
    let cols = cols(&parent.config, &c.cfg);
    assert_eq!(cols["head"].0, cols["head"].1);
    let head_width = cols["head"].1.len();
    let named = check_roles(&mut *parent.model, &mut c, &cols, |name| {
        mmoe_roles(name, "head", &[(0, "head"), (head_width, "gates")], true)
    });
    assert!(named.iter().any(|n| n == "gates.0.hidden.blocks.0.linear.weight"), "{named:?}");
    assert!(has(&c.changes, "gate input width 8 -> 8"), "{:?}", c.changes);
}

#[test]
fn two_tower_towers_remap_by_their_own_inputs() {
    let groups = "\n[feature_groups]\nuser = [\"user_id\", \"user_interests\", \"user_activity\"]\n\
        context = [\"context_category\", \"surface_id\", \"device_id\"]\n\
        ad = [\"ad_id\", \"advertiser_id\", \"ad_category\", \"ad_age_days\", \"bid\", \"ad_hist_ctr\"]\n";
    // The user tower: an MMoE of every expert kind; the item tower: one MLP bottom.
    let user = EXPERTS
        .replace(
            "[model]\narchitecture = \"mmoe\"",
            "[model.two_tower.user]\ninputs = [\"user\", \"context\"]\narchitecture = \"mmoe\"",
        )
        .replace("[[model.experts]]", "[[model.two_tower.user.experts]]");
    let model = format!(
        "[model]\narchitecture = \"two_tower\"\n[model.two_tower]\ndim = 8\n{user}\
         [model.two_tower.item]\ninputs = [\"ad\"]\narchitecture = \"shared_bottom\"\nexpert_dim = 8\n\
         tower = {{ hidden = [8] }}\n[[model.two_tower.item.experts]]\nkind = \"mlp\"\nhidden = [16]\n{TRAIN}"
    );
    let p = parent_with(groups, &model);
    let mut parent = parent_model(&p);
    // Both towers' columns move, each at its own width.
    let text = p
        .config_text
        .replace("\"surface_id\", \"device_id\"]", "\"device_id\", \"surface_id\"]")
        .replace("\"ad_age_days\", \"bid\"", "\"bid\", \"ad_age_days\"");
    let mut c = child(&p, &text, &model).unwrap();
    let cols = cols(&parent.config, &c.cfg);
    for t in ["user", "item"] {
        assert_ne!(cols[t].0, cols[t].1, "{t} columns moved");
    }
    let named = check_roles(&mut *parent.model, &mut c, &cols, |name| {
        if let Some(rest) = name.strip_prefix("user.") {
            mmoe_roles(rest, "user", &[(0, "user")], false)
        } else if let Some(rest) = name.strip_prefix("item.experts.0.") {
            mlp_roles(rest, "item")
        } else {
            vec![]
        }
    });
    assert!(named.iter().any(|n| n == "item.experts.0.blocks.0.linear.weight"), "{named:?}");
    assert!(named.iter().any(|n| n == "user.experts.2.proj.weight"), "{named:?}");
    assert!(has(&c.changes, "user tower input width"), "{:?}", c.changes);
    assert!(has(&c.changes, "item tower input width"), "{:?}", c.changes);
}

#[test]
fn a_changed_position_tower_input_of_the_same_width_is_refused_naming_it() {
    let groups =
        "\n[feature_groups]\nbias = [\"position_id\", \"device_id\"]\ncontext = [\"device_id\", \"surface_id\"]\n";
    let model = MODEL.replace("[[model.experts]]", "position_tower = { hidden = [4] }\n[[model.experts]]");
    let p = parent_with(groups, &model);
    // device_id (4 columns) replaced by surface_id (4 columns): same width, other features.
    let text =
        p.config_text.replace("bias = [\"position_id\", \"device_id\"]", "bias = [\"position_id\", \"surface_id\"]");
    let e = child(&p, &text, &model).err().expect("refused");
    assert!(e.contains("logit_sources.0.blocks.0.linear.weight") && e.contains("position tower"), "{e}");
}

#[test]
fn ple_levels_remap_the_first_level_and_keep_the_next() {
    // Level 0's experts and gates read the input; level 1's read level 0's mixtures.
    let model = format!(
        "[model]\narchitecture = \"ple\"\nexpert_dim = 16\ntower = {{ hidden = [8] }}\n\
         [model.ple]\nlevels = 2\nshared_experts = 2\ntask_experts = 1\n\
         [[model.experts]]\nkind = \"mlp\"\nhidden = [113, 16]\n\
         [[model.experts]]\nkind = \"dcnv2\"\ncross_layers = 2\nstructure = \"stacked\"\nhidden = [16]\n{TRAIN}"
    );
    let p = parent_with("", &model);
    let mut parent = parent_model(&p);
    let text = swap_surface_and_device(&p.config_text);
    let mut c = child(&p, &text, &model).unwrap();
    let cols = cols(&parent.config, &c.cfg);
    let named = check_roles(&mut *parent.model, &mut c, &cols, |name| {
        let Some(rest) = name.strip_prefix("ple.levels.0.") else { return vec![] };
        let parts: Vec<&str> = rest.split('.').collect();
        match parts[..] {
            // tasks.<t>.experts.0: the list's first kind (mlp).
            ["tasks", _, "experts", "0", ..] => mlp_roles(&parts[4..].join("."), "head"),
            ["tasks", _, "gate", "weight"] | ["shared_gate", "weight"] => vec![(0, 0, "head")],
            // shared_experts.<k>: kinds 0 (mlp) and 1 (dcnv2), i.e. EXPERTS' 0 and 1.
            ["shared_experts", k, ..] => expert_roles(k.parse().unwrap(), &parts[2..].join("."), "head"),
            _ => vec![],
        }
    });
    for want in [
        "ple.levels.0.tasks.0.experts.0.blocks.0.linear.weight",
        "ple.levels.0.tasks.3.gate.weight",
        "ple.levels.0.shared_gate.weight",
        "ple.levels.0.shared_experts.1.cross.layers.0.w",
    ] {
        assert!(named.iter().any(|n| n == want), "{want} not in {named:?}");
    }
    assert!(!named.iter().any(|n| n.starts_with("ple.levels.1.")), "{named:?}");
}

#[test]
fn mixtures_of_experts_whose_outputs_carry_the_input_columns_remap_or_are_refused() {
    // Parallel DCNs whose `[cross | deep]` output is exactly `expert_dim` wide have no
    // projection: the mixture, and so the towers' first layers, carry the input's columns
    // in their first rows.
    let dcn = "[[model.experts]]\nkind = \"dcnv2\"\ncross_layers = 1\nlow_rank = 4\nstructure = \"parallel\"\nhidden = [16]\n";
    let head = |experts: &str| {
        format!(
            "[model]\narchitecture = \"mmoe\"\nexpert_dim = {}\ntower = {{ hidden = [8] }}\n{experts}{TRAIN}",
            WIDTH + 16
        )
    };
    let model = head(&format!("{dcn}count = 2\n"));
    let p = parent_with("", &model);
    let mut parent = parent_model(&p);
    let text = swap_surface_and_device(&p.config_text);
    let mut c = child(&p, &text, &model).unwrap();
    let cols = cols(&parent.config, &c.cfg);
    let named = check_roles(&mut *parent.model, &mut c, &cols, |name| {
        let parts: Vec<&str> = name.split('.').collect();
        match parts[..] {
            ["experts", _, "cross", _, _, "w"] => vec![(0, 0, "head"), (1, 0, "head")],
            ["experts", _, "cross", ..] => vec![(0, 0, "head")],
            ["experts", _, "deep", "blocks", "0", "linear", "weight"] => vec![(0, 0, "head")],
            ["gates", _, "weight"] => vec![(0, 0, "head")],
            ["towers", _, "blocks", "0", "linear", "weight"] => vec![(0, 0, "head")],
            _ => vec![],
        }
    });
    assert!(named.iter().any(|n| n == "towers.2.blocks.0.linear.weight"), "{named:?}");
    // Beside an MLP expert (its own units in the same positions) no per-column map exists:
    // refused when the columns move, naming the towers' input.
    let model = head(&format!("{dcn}[[model.experts]]\nkind = \"mlp\"\nhidden = [{}]\n", WIDTH + 16));
    let p = parent_with("", &model);
    let e = child(&p, &swap_surface_and_device(&p.config_text), &model).err().expect("refused");
    assert!(e.contains("towers.0.blocks.0.linear.weight") && e.contains("no per-column map"), "{e}");
    // Unchanged columns: carried as they are.
    child(&p, &p.config_text, &model).unwrap();
}

/// Per-surface towers (`[model.tower] per_surface`): a same-config warm start carries
/// every surface's towers (`towers.<t>.surface.<s>.*`) as the checkpoint holds them;
/// other `[columns] segment` values (here the same in another order: each tower is a
/// value's by position) are refused naming both lists; dropping the key is a changed
/// head, refused naming it.
#[test]
fn per_surface_towers_need_the_parents_surfaces() {
    let model = MODEL.replace("tower = { hidden = [8] }", "tower = { hidden = [8], per_surface = true }");
    assert_ne!(model, MODEL);
    let p = parent_with("", &model);
    let mut c = child(&p, &p.config_text, &model).unwrap();
    assert!(c.changes.is_empty(), "{:?}", c.changes);
    let mut parent = parent_model(&p);
    let (got, want) = (head(&mut *c.model), head(&mut *parent.model));
    assert_eq!(got, want);
    assert!(got.iter().any(|(n, _, _)| n.starts_with("towers.0.surface.2.")), "{got:?}");
    // Each surface's tower has its own weights.
    let first = |s: usize| got.iter().find(|(n, _, _)| n.starts_with(&format!("towers.0.surface.{s}."))).unwrap();
    assert_ne!(first(0).2, first(1).2);
    let values = "values = [\"home_feed\", \"related_pins\", \"search\"]";
    assert!(p.config_text.contains(values), "the simulator's config changed");
    let reordered = p.config_text.replace(values, "values = [\"search\", \"related_pins\", \"home_feed\"]");
    let e = child(&p, &reordered, &model).err().expect("other surfaces are refused");
    assert!(e.contains("per_surface") && e.contains("\"search\", \"related_pins\", \"home_feed\""), "{e}");
    assert!(e.contains("\"home_feed\", \"related_pins\", \"search\""), "{e}");
    let e = child(&p, &p.config_text, MODEL).err().expect("dropping per_surface is a changed head");
    assert!(e.contains("model.tower.per_surface"), "{e}");
}
