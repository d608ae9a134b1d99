//! The whole model through feature groups and the position tower: the head reads only
//! its groups (input width, order), the finite-difference check runs from the embedding
//! tables through the groups into the head and the tower (every parameter and every
//! table gets a non-zero gradient), evaluation-mode logits do not depend on features
//! only the tower reads, each `[model.position_tower]` key has an effect, and one
//! explicit group of every feature is the model without groups.

use mixrank_data::{Batch, CatColumn, ExperimentConfig};
use mixrank_engine::{Backend, CpuOps};
use mixrank_model::RankingModel;
use mixrank_nn::testing::{check_grads, RefOpsF64};
use mixrank_nn::Parameters;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type F = RefOpsF64;
const ROWS: usize = 5;

/// user (3), a shared `cat` table read by `ad_category` and the pooled `interests` (2),
/// ad (2), position (2), device (2); dense `bid` (+ missing indicator) and `age`.
const DATA: &str = r#"
[data]
format = "parquet"
[data.splits.train]
paths = ["x"]

[tables.cat]
buckets = 4
dim = 2

[[features.categorical]]
name = "user"
buckets = 6
dim = 3

[[features.categorical]]
name = "ad"
buckets = 5
dim = 2

[[features.categorical]]
name = "ad_category"
table = "cat"

[[features.categorical]]
name = "interests"
table = "cat"
multi_valued = { pooling = "mean" }

[[features.categorical]]
name = "position"
buckets = 4
dim = 2

[[features.categorical]]
name = "device"
vocabulary = ["ios", "web"]
dim = 2

[[features.dense]]
name = "bid"
missing_indicator = true

[[features.dense]]
name = "age"

[[tasks]]
name = "click"
kind = "binary"
label = "click"

[[tasks]]
name = "save"
kind = "binary"
label = "save"
"#;

const GROUPS: &str = r#"
[feature_groups]
user = ["user", "interests", "age"]
ad = ["ad", "ad_category", "bid"]
context = ["device"]
bias = ["position", "device"]
"#;

const MODEL: &str = r#"
[model]
architecture = "mmoe"
expert_dim = 3
tower = { hidden = [2], activation = "tanh" }
[[model.experts]]
kind = "mlp"
count = 2
hidden = [3]
activation = "tanh"
"#;

fn config(groups: &str, model_keys: &str, tower: &str) -> ExperimentConfig {
    let model = MODEL.replace("expert_dim = 3\n", &format!("expert_dim = 3\n{model_keys}"));
    ExperimentConfig::parse(&format!("{DATA}{groups}{model}{tower}"), std::path::Path::new("t.toml"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The grouped model: the head reads ad, user, context (not in config order); the
/// tower reads bias and adds to `click` only, with feature dropout.
fn grouped() -> ExperimentConfig {
    config(
        GROUPS,
        "inputs = [\"ad\", \"user\", \"context\"]\n",
        "[model.position_tower]\nhidden = [3]\nactivation = \"tanh\"\ndropout = 0.3\ntasks = [\"click\"]\n",
    )
}

fn batch(cfg: &ExperimentConfig, seed: u64) -> Batch {
    let mut rng = StdRng::seed_from_u64(seed);
    let cat = cfg
        .categorical
        .iter()
        .map(|f| {
            let rows = cfg.tables[f.table].rows() as u32;
            match f.pooling {
                None => CatColumn { ids: (0..ROWS).map(|_| rng.random_range(0..rows)).collect(), offsets: None },
                // Bags of 2, 1, 0, 3, 1 ids.
                Some(_) => {
                    let offsets = vec![0u32, 2, 3, 3, 6, 7];
                    let ids = (0..offsets[ROWS]).map(|_| rng.random_range(0..rows)).collect();
                    CatColumn { ids, offsets: Some(offsets) }
                }
            }
        })
        .collect();
    let width = cfg.dense_width();
    Batch {
        rows: ROWS,
        cat,
        dense: (0..ROWS * width).map(|_| rng.random_range(-1.0..1.0)).collect(),
        dense_width: width,
        n_tasks: 2,
        position: vec![1, 2, 3, 1, 2],
        // Read only with per-surface towers (`[columns] segment` of two values).
        segment: vec![0, 1, 1, 0, 1],
        ..Default::default()
    }
}

fn model<B: Backend + 'static>(cfg: &ExperimentConfig, ops: &B) -> RankingModel<B>
where
    B::Buf: Send,
{
    RankingModel::new(cfg, ops, ROWS, &mut StdRng::seed_from_u64(3)).unwrap()
}

fn logits(m: &mut RankingModel<F>, ops: &F, b: &Batch) -> Vec<Vec<f64>> {
    m.forward(ops, b).unwrap();
    (0..2).map(|t| m.logits(t)[..ROWS].to_vec()).collect()
}

fn param_names(m: &mut RankingModel<F>) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    m.params(&mut |n, p| out.push((n.to_string(), p.shape.clone())));
    out
}

#[test]
fn the_head_reads_its_groups_and_the_tower_its_own() {
    let ops = F::new();
    let cfg = grouped();
    let mut m = model(&cfg, &ops);
    // ad: ad 2 + ad_category 2 + bid 1 + its indicator 1; user: 3 + 2 + 1; context: 2.
    // `position` (only in bias) is not read by the head.
    assert_eq!(m.d_in(), 6 + 6 + 2);
    assert_eq!(m.head.d_in(), 14);
    let d = m.describe_inputs();
    let summary: Vec<(String, Vec<(String, usize)>)> =
        d.iter().map(|(part, g)| (part.clone(), g.iter().map(|g| (g.name.clone(), g.width)).collect())).collect();
    assert_eq!(
        summary,
        [
            ("head".to_string(), vec![("ad".to_string(), 6), ("user".to_string(), 6), ("context".to_string(), 2)]),
            ("logit_sources.0".to_string(), vec![("bias".to_string(), 4)]),
        ]
    );
    assert_eq!(d[0].1[1].features, ["user", "interests", "age"]);
    // The tower's parameters come after the head's, as logit_sources.0.*.
    let names = param_names(&mut m);
    let tower: Vec<&(String, Vec<usize>)> = names.iter().filter(|(n, _)| n.starts_with("logit_sources.")).collect();
    assert_eq!(
        tower.iter().map(|(n, s)| (n.as_str(), s.clone())).collect::<Vec<_>>(),
        [
            ("logit_sources.0.blocks.0.linear.weight", vec![4, 3]),
            ("logit_sources.0.blocks.0.linear.bias", vec![3]),
            ("logit_sources.0.output.weight", vec![3, 1]),
            ("logit_sources.0.output.bias", vec![1]),
        ]
    );
    assert!(names[names.len() - 4].0.starts_with("logit_sources."), "last");
    // Without the tower, the bias group can feed the head.
    let plain = config(GROUPS, "inputs = [\"ad\", \"user\", \"bias\"]\n", "");
    let plain = model(&plain, &ops);
    assert_eq!(plain.d_in(), 12 + 4, "the bias group in the head");
}

#[test]
fn gradients_flow_from_the_tables_through_the_groups_into_head_and_tower() {
    check_from_tables(&grouped(), "embeddings → groups → head + position tower");
}

/// Surface-aware gating: `device` is read by the gates only (group `surface`), so its
/// table's gradient comes through the gates' input path alone.
fn gated(model_keys: &str) -> ExperimentConfig {
    gated_as("mmoe", model_keys)
}

fn gated_as(architecture: &str, model_keys: &str) -> ExperimentConfig {
    let groups = "[feature_groups]\nuser = [\"user\", \"interests\", \"age\"]\n\
                  ad = [\"ad\", \"ad_category\", \"bid\"]\npos = [\"position\"]\nsurface = [\"device\"]\n";
    let model = MODEL.replace("architecture = \"mmoe\"", &format!("architecture = \"{architecture}\""));
    let keys = format!("expert_dim = 3\ninputs = [\"ad\", \"user\", \"pos\"]\n{model_keys}");
    let model = model.replace("expert_dim = 3\n", &keys);
    ExperimentConfig::parse(&format!("{DATA}{groups}{model}"), std::path::Path::new("t.toml"))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn surface_aware_gates_read_their_group_and_gradients_reach_its_table() {
    let ops = F::new();
    let cfg = gated("gate = { inputs = [\"surface\"] }\n");
    let mut m = model(&cfg, &ops);
    let d = m.describe_inputs();
    let summary: Vec<(String, Vec<(String, usize)>)> =
        d.iter().map(|(part, g)| (part.clone(), g.iter().map(|g| (g.name.clone(), g.width)).collect())).collect();
    assert_eq!(
        summary,
        [
            ("head".to_string(), vec![("ad".to_string(), 6), ("user".to_string(), 6), ("pos".to_string(), 2)]),
            ("gates".to_string(), vec![("surface".to_string(), 2)]),
        ]
    );
    // Each gate reads the 14 head columns (no shared layer: the trunk is the input) and
    // the 2 surface columns; the experts read the 14 only.
    let names = param_names(&mut m);
    let shape = |n: &str| names.iter().find(|(k, _)| k == n).map(|(_, s)| s.clone()).unwrap();
    assert_eq!(shape("gates.0.weight"), [16, 2]);
    assert_eq!(shape("gates.1.weight"), [16, 2]);
    let first = names.iter().find(|(k, _)| k.starts_with("experts.0.") && k.ends_with("weight")).unwrap();
    assert_eq!(first.1[0], 14, "{first:?}");
    check_from_tables(&cfg, "embeddings → surface group → MMoE gates");
    // The gates alone (no expert input), behind a shared layer, OMoE.
    let cfg = gated_as(
        "omoe",
        "shared = { hidden = [4], activation = \"tanh\" }\ngate = { inputs = [\"surface\"], expert_input = false }\n",
    );
    let mut m = model(&cfg, &ops);
    let names = param_names(&mut m);
    let shape = |n: &str| names.iter().find(|(k, _)| k == n).map(|(_, s)| s.clone()).unwrap();
    assert_eq!(shape("gates.0.weight"), [2, 2]);
    check_from_tables(&cfg, "embeddings → shared layer → experts; surface group → OMoE gate");
}

#[test]
fn the_device_column_moves_the_logits_only_through_the_gates() {
    // device feeds only the gates: changing it changes the logits with gate inputs on,
    // and a model without them does not read it (its config is refused: unread feature).
    let ops = F::new();
    let cfg = gated("gate = { inputs = [\"surface\"], expert_input = false }\n");
    let mut m = model(&cfg, &ops);
    m.set_training(false);
    let b = batch(&cfg, 4);
    let dev = cfg.categorical.iter().position(|f| f.name == "device").unwrap();
    let mut flipped = b.clone();
    for id in &mut flipped.cat[dev].ids {
        *id = (*id + 1) % 3;
    }
    let (l0, l1) = (logits(&mut m, &ops, &b), logits(&mut m, &ops, &flipped));
    assert!(l0.iter().zip(&l1).any(|(a, c)| a.iter().zip(c).any(|(x, y)| (x - y).abs() > 1e-9)));
    let err = ExperimentConfig::parse(
        &format!("{DATA}[feature_groups]\nall = [\"user\", \"interests\", \"age\", \"ad\", \"ad_category\", \"bid\", \"position\"]\n{}", MODEL.replace("expert_dim = 3\n", "expert_dim = 3\ninputs = [\"all\"]\n")),
        std::path::Path::new("t.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("device"), "{err}");
}

#[test]
fn gate_inputs_are_refused_where_they_cannot_apply() {
    let parse = |model: &str| {
        let groups = "[feature_groups]\nsurface = [\"device\"]\n";
        ExperimentConfig::parse(&format!("{DATA}{groups}{model}"), std::path::Path::new("t.toml"))
            .err()
            .map(|e| e.to_string())
    };
    let sb = "[model]\narchitecture = \"shared_bottom\"\ngate = { inputs = [\"surface\"] }\n\
              [[model.experts]]\nkind = \"mlp\"\nhidden = [3]\n";
    let err = parse(sb).expect("shared_bottom with gate inputs is refused");
    assert!(err.contains("model.gate.inputs") && err.contains("no gate"), "{err}");
    let ple = "[model]\narchitecture = \"ple\"\ngate = { inputs = [\"surface\"] }\nple = { levels = 1, shared_experts = 1, task_experts = 1 }\n\
               [[model.experts]]\nkind = \"mlp\"\nhidden = [3]\n";
    let err = parse(ple).expect("ple with gate inputs is refused (not built)");
    assert!(err.contains("model.gate.inputs") && err.contains("not yet"), "{err}");
    let no_input = "[model]\narchitecture = \"mmoe\"\ngate = { expert_input = false }\n\
                    [[model.experts]]\nkind = \"mlp\"\nhidden = [3]\n";
    let err = parse(no_input).expect("expert_input = false alone is refused");
    assert!(err.contains("model.gate.expert_input"), "{err}");
    let unknown = "[model]\narchitecture = \"mmoe\"\ngate = { inputs = [\"nope\"] }\n\
                   [[model.experts]]\nkind = \"mlp\"\nhidden = [3]\n";
    let err = parse(unknown).expect("an unknown group is refused");
    assert!(err.contains("model.gate.inputs") && err.contains("nope"), "{err}");
}

/// The finite-difference check from the embedding tables through the whole model (every
/// table, head and tower parameter gets a non-zero gradient).
fn check_from_tables(cfg: &ExperimentConfig, label: &str) {
    let ops = F::new();
    let mut m = model(cfg, &ops);
    let b = batch(cfg, 9);
    // Random head and tower parameters, so no term hides at 0.
    let mut rng = StdRng::seed_from_u64(10);
    m.params(&mut |_, p| {
        let n = p.len();
        for v in &mut p.value[..n] {
            *v = rng.random_range(-0.8..0.8);
        }
    });
    // The tables are the checked input: their gradient comes back sparse per feature.
    let emb = m.emb.as_ref().unwrap();
    let sizes: Vec<usize> = emb.tables().iter().map(|t| t.rows * t.dim).collect();
    let table_of: Vec<usize> = emb.config().features.iter().map(|f| f.table).collect();
    let tables: Vec<f64> = (0..sizes.iter().sum()).map(|_| rng.random_range(-1.0..1.0)).collect();
    let set_tables = |m: &mut RankingModel<F>, flat: &[f64]| {
        let mut at = 0;
        for t in m.emb.as_mut().unwrap().tables_mut() {
            let n = t.rows * t.dim;
            t.value[..n].copy_from_slice(&flat[at..at + n]);
            at += n;
        }
    };
    let forward = |m: &mut RankingModel<F>, inputs: &[Vec<f64>]| -> Vec<f64> {
        set_tables(m, &inputs[0]);
        // The same feature-dropout mask for every evaluation.
        m.set_dropout_step(0);
        logits(m, &ops, &b).concat()
    };
    let backward = |m: &mut RankingModel<F>, inputs: &[Vec<f64>], r: &[f64]| -> Vec<Vec<f64>> {
        set_tables(m, &inputs[0]);
        m.set_dropout_step(0);
        m.forward(&ops, &b).unwrap();
        let (d0, d1) = r.split_at(ROWS);
        m.backward(&ops, &b, &[&d0.to_vec(), &d1.to_vec()]).unwrap();
        // Sparse gradients (per feature) summed into dense table gradients.
        let emb = m.emb.as_ref().unwrap();
        let offsets: Vec<usize> = sizes.iter().scan(0, |a, &s| Some(std::mem::replace(a, *a + s))).collect();
        let mut d = vec![0.0; sizes.iter().sum()];
        for (f, &t) in table_of.iter().enumerate() {
            let g = emb.grad(f);
            for (k, &id) in g.ids[..g.len].iter().enumerate() {
                for j in 0..g.dim {
                    d[offsets[t] + id as usize * g.dim + j] += g.rows[k * g.dim + j];
                }
            }
        }
        for (t, (&o, &s)) in offsets.iter().zip(&sizes).enumerate() {
            assert!(d[o..o + s].iter().any(|v| v.abs() > 1e-6), "table {t} has an all-zero gradient");
        }
        vec![d]
    };
    // Also asserts every head and tower parameter receives a non-zero gradient.
    check_grads(label, &mut m, &[tables], forward, backward, 11);
}

#[test]
fn evaluation_logits_do_not_depend_on_position_and_training_adds_the_tower_to_its_tasks() {
    let ops = F::new();
    let cfg = grouped();
    let mut m = model(&cfg, &ops);
    let b = batch(&cfg, 4);
    let mut moved = b.clone();
    let p = cfg.categorical.iter().position(|f| f.name == "position").unwrap();
    moved.cat[p].ids = b.cat[p].ids.iter().map(|&i| (i + 1) % 4).collect();
    moved.position = b.position.iter().map(|&x| x % 3 + 1).collect();
    assert_ne!(moved.cat[p].ids, b.cat[p].ids);

    m.set_training(false);
    let eval = logits(&mut m, &ops, &b);
    assert_eq!(logits(&mut m, &ops, &moved), eval, "evaluation: position is not read");

    m.set_training(true);
    m.set_dropout_step(0);
    let train = logits(&mut m, &ops, &b);
    m.set_dropout_step(0);
    let train_moved = logits(&mut m, &ops, &moved);
    // The head has no dropout: `save` (not a tower task) scores as in evaluation; `click`
    // gets the tower's logit, which reads position.
    assert_eq!(train[1], eval[1]);
    assert_eq!(train_moved[1], eval[1]);
    assert_ne!(train[0], eval[0]);
    assert_ne!(train_moved[0], train[0], "the tower reads position");
}

#[test]
fn each_position_tower_key_has_an_effect() {
    let ops = F::new();
    let base = "[model.position_tower]\ndropout = 0.0\n";
    let build = |tower: &str| {
        let cfg = config(GROUPS, "inputs = [\"ad\", \"user\", \"context\"]\n", tower);
        let b = batch(&cfg, 5);
        (model(&cfg, &ops), b)
    };
    let shapes = |tower: &str| -> Vec<(String, Vec<usize>)> {
        param_names(&mut build(tower).0).into_iter().filter(|(n, _)| n.starts_with("logit_sources")).collect()
    };
    let train = |tower: &str, step: u64| -> Vec<Vec<f64>> {
        let (mut m, b) = build(tower);
        m.set_dropout_step(step);
        logits(&mut m, &ops, &b)
    };
    // hidden: the default [16]; [] is a linear map to the logit.
    assert_eq!(shapes(base)[0].1, [4, 16]);
    assert_eq!(shapes(&format!("{base}hidden = [5, 2]\n")).len(), 6);
    assert_eq!(
        shapes(&format!("{base}hidden = []\n")),
        [("logit_sources.0.output.weight".into(), vec![4, 1]), ("logit_sources.0.output.bias".into(), vec![1])]
    );
    // activation.
    assert_ne!(train(base, 0), train(&format!("{base}activation = \"tanh\"\n"), 0));
    // tasks: default every task; a chosen task only.
    let (mut m, b) = build(base);
    m.set_training(false);
    let eval = logits(&mut m, &ops, &b);
    let all = train(base, 0);
    assert!(all[0] != eval[0] && all[1] != eval[1]);
    let save = train(&format!("{base}tasks = [\"save\"]\n"), 0);
    assert!(save[0] == eval[0] && save[1] != eval[1]);
    // inputs: the groups read.
    assert_eq!(shapes(&format!("{base}inputs = [\"bias\", \"user\"]\n"))[0].1, [4 + 6, 16]);
    // dropout: no dropout gives the same logits at every step; with it, steps differ
    // and a step repeats its mask.
    assert_eq!(train(base, 0), train(base, 1));
    let dropped = "[model.position_tower]\ndropout = 0.5\n";
    assert_ne!(train(dropped, 0), train(dropped, 1));
    assert_eq!(train(dropped, 1), train(dropped, 1));
}

#[test]
fn one_group_of_every_feature_in_config_order_is_the_model_without_groups() {
    let ops = CpuOps::new();
    let plain = config("", "", "");
    let all = "\n[feature_groups]\nall = [\"user\", \"ad\", \"ad_category\", \"interests\", \"position\", \"device\", \"bid\", \"age\"]\n";
    let grouped = config(all, "inputs = [\"all\"]\n", "");
    // Unused groups, and no `inputs`: the default is every feature too.
    let unused = config(GROUPS, "", "");
    let b = batch(&plain, 7);
    let mut out = Vec::new();
    for cfg in [&plain, &grouped, &unused] {
        let mut m = model(cfg, &ops);
        let mut names = Vec::new();
        let mut values = Vec::new();
        m.params(&mut |n, p| {
            names.push(n.to_string());
            values.extend_from_slice(&p.value[..p.len()]);
        });
        m.forward(&ops, &b).unwrap();
        let mut host = vec![0f32; ROWS];
        let mut logits = Vec::new();
        for t in 0..2 {
            ops.read(m.logits(t), &mut host).unwrap();
            logits.push(host.clone());
        }
        out.push((m.d_in(), names, values, logits));
    }
    assert_eq!(out[0], out[1], "one explicit group of every feature");
    assert_eq!(out[0], out[2], "groups the model does not read");
}

/// Per-surface towers in the whole model: the surfaces come from the batch's segment
/// ids (`Batch::segment`), the finite-difference check runs from the tables through
/// them (every surface's towers get a gradient), and changing one row's surface changes
/// that row's logits only.
#[test]
fn per_surface_towers_read_each_rows_segment() {
    let ops = F::new();
    let text = format!(
        "{DATA}[columns]\nsegment = {{ column = \"surface\", values = [\"feed\", \"search\"] }}\n{}",
        MODEL.replace("activation = \"tanh\" }", "activation = \"tanh\", per_surface = true }")
    );
    let cfg = ExperimentConfig::parse(&text, std::path::Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.model.as_ref().unwrap().tower.per_surface);
    let mut m = model(&cfg, &ops);
    let names = param_names(&mut m);
    for t in 0..2 {
        for s in 0..2 {
            let n = format!("towers.{t}.surface.{s}.");
            assert!(names.iter().any(|(k, _)| k.starts_with(&n)), "no {n}* in {names:?}");
        }
    }
    m.set_training(false);
    let b = batch(&cfg, 4);
    let before = logits(&mut m, &ops, &b);
    let mut moved = b.clone();
    moved.segment[2] = 0;
    let after = logits(&mut m, &ops, &moved);
    for t in 0..2 {
        for r in 0..ROWS {
            if r == 2 {
                assert_ne!(after[t][r], before[t][r], "task {t}: row 2 changed surface");
            } else {
                assert_eq!(after[t][r].to_bits(), before[t][r].to_bits(), "task {t} row {r}");
            }
        }
    }
    let mut bad = b.clone();
    bad.segment[0] = 2;
    let e = m.forward(&ops, &bad).unwrap_err().to_string();
    assert!(e.contains("segment id 2"), "{e}");
    check_from_tables(&cfg, "embeddings → MMoE → per-surface towers");
}
