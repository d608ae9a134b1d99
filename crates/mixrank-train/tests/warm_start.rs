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
use mixrank_train::warm_start::{input_columns, warm_start};
use mixrank_train::{train, TrainOptions};
use rand::SeedableRng;
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
